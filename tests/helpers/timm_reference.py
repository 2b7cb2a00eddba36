"""timm as the reference: random models, converted twins, their outputs with attention and
hidden states captured with hooks, and Chefer et al.'s relevance with autograd.

The one "timm with hooks" of the project: the tests compare vitops with it, and the benchmarks
time vitops beside it (benchmarks/ import it from here).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402

# Small enough for every test to run in well under a second, big enough to have several heads
# and blocks; head width 64 as in every real variant, so the head count is inferable.
TINY = dict(embed_dim=128, num_heads=2, depth=3, img_size=64, mlp_ratio=3.0)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every tensor its own random values, scaled so attention is neither uniform nor
    one-hot: LayerNorm scales around 1 and biases, tokens and position tables all random, so
    a swapped or mis-transposed tensor changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():
            r = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * r)
            elif p.ndim >= 2 and name.endswith("weight"):
                p.copy_(r / np.sqrt(p[0].numel()))
            else:
                p.copy_(0.5 * r)
    return model


def make_timm(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    kwargs.setdefault("dynamic_img_size", True)  # timm resamples pos_embed per input size
    return randomize_(timm.create_model(name, pretrained=False, **kwargs).eval(), seed)


def save_state_dict(model: torch.nn.Module, path) -> None:
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def timm_twin(folder, name: str, seed: int = 0, arch: str | None = None, **kwargs):
    """A randomised timm model and its vitops twin: (timm model, path of the converted file).
    The checkpoint is saved as timm's hub files are (a safetensors state dict), then converted."""
    import vitops

    ref = make_timm(name, seed=seed, **kwargs)
    stem = name.replace(".", "_")
    save_state_dict(ref, folder / f"{stem}.timm.safetensors")
    vitops.convert(folder / f"{stem}.timm.safetensors", folder / f"{stem}.safetensors", arch=arch)
    return ref, folder / f"{stem}.safetensors"


@contextlib.contextmanager
def captured(model, grads: bool = False):
    """Within the block: every block's attention probabilities (B, H, T, T) and the hidden states
    (the input of block 0, then each block's output) of the timm model's forward passes, taken
    with hooks on its own modules (attention through its unfused path). grads=True keeps the
    gradient of each attention map (for Chefer et al.'s rule). Yields {"attention", "hidden"}."""
    got = {"attention": [], "hidden": []}

    def keep_attention(module, inputs, output):
        if grads:
            output.retain_grad()
        got["attention"].append(output)

    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, a: got["hidden"].append(a[0]))]
    pool = getattr(model, "attn_pool", None)
    if pool is not None:  # SigLIP's head: its probabilities through an unfused copy of its forward
        pool.forward = _pool_forward_keeping(pool, got, grads)
    fused = [blk.attn.fused_attn for blk in model.blocks]
    for blk in model.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(keep_attention))
        hooks.append(blk.register_forward_hook(lambda m, i, o: got["hidden"].append(o)))
    try:
        yield got
    finally:
        if pool is not None:
            del pool.forward  # back to the class's own
        for h in hooks:
            h.remove()
        for blk, f in zip(model.blocks, fused):
            blk.attn.fused_attn = f


def _pool_forward_keeping(pool, got, grads):
    """timm's AttentionPoolLatent.forward (one latent query, no mask), unfused, keeping the
    probabilities (B, H, 1, N) in got["pool"]."""

    def forward(x, attn_mask=None):
        b, n, c = x.shape
        q = pool.q(pool.latent.expand(b, -1, -1)).reshape(b, 1, pool.num_heads, pool.head_dim).transpose(1, 2)
        k, v = pool.kv(x).reshape(b, n, 2, pool.num_heads, pool.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((pool.q_norm(q) * pool.scale) @ pool.k_norm(k).transpose(-2, -1)).softmax(dim=-1)
        if grads:
            attn.retain_grad()
        got["pool"] = attn
        y = pool.proj((attn @ v).transpose(1, 2).reshape(b, 1, c))
        return (y + pool.mlp(pool.norm(y)))[:, 0]

    return forward


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2)


def timm_outputs(model, images_nhwc: np.ndarray) -> dict:
    """Output (logits or features), every block's attention probabilities and the hidden
    states of the timm model on (B, Y, X, 3) images, as numpy."""
    with captured(model) as got, torch.no_grad():
        out = model(nchw(images_nhwc))
    return {
        "output": out.numpy(),
        "attention": [a.numpy() for a in got["attention"]],
        "hidden": [h.numpy() for h in got["hidden"]],
    }


def chefer_relevance(model, images_nhwc, classes=None, score=None, dtype=torch.float64):
    """Chefer, Gur & Wolf (2021) on the timm model with hooks and autograd, as their ViT example's
    generate_relevance, batched: R = I; per block in forward order R <- R + mean_h[(dA * A)^+] R,
    dA the gradient of the summed target scores. Target: score(out) if given, else the logits of
    `classes` (default each image's top class). Returns (R's CLS rows (B, T) as numpy, the
    classes explained or None)."""
    x = images_nhwc if isinstance(images_nhwc, torch.Tensor) else nchw(images_nhwc)
    with captured(model, grads=True) as got:
        out = model(x)
        if score is not None:
            target, classes = score(out), None
        else:
            classes = out.argmax(-1) if classes is None else torch.as_tensor(classes)
            target = out.gather(1, classes[:, None].long())[:, 0]
        target.sum().backward()
    attention = got["attention"]
    b, t = x.shape[0], attention[0].shape[-1]
    r = torch.eye(t, dtype=dtype).repeat(b, 1, 1)
    with torch.no_grad():
        for a in attention:
            r = r + (a.grad.to(dtype) * a.to(dtype)).clamp(min=0).mean(dim=1) @ r
        if "pool" in got:  # no class token: the pooling query's gradient-weighted row over the patches
            a = got["pool"]
            f = (a.grad.to(dtype) * a.to(dtype)).clamp(min=0).mean(dim=1)[:, 0]  # (B, N)
            f = torch.nn.functional.pad(f, (t - f.shape[-1], 0))
            return (f[:, None] @ r)[:, 0].numpy(), None if classes is None else classes.numpy()
    return r[:, 0].numpy(), None if classes is None else classes.numpy()


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())
