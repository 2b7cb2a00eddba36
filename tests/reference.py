"""timm as the reference: random models, and their outputs with attention and hidden states."""

from __future__ import annotations

import numpy as np
import timm
import torch
from safetensors.torch import save_file

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


def timm_outputs(model, images_nhwc: np.ndarray) -> dict:
    """Output (logits or features), every block's attention probabilities and the hidden
    states, captured with hooks on timm's own modules (attention via the unfused path)."""
    attention, hidden = [], []
    hooks = [model.blocks[0].register_forward_pre_hook(lambda m, a: hidden.append(a[0]))]
    for blk in model.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: attention.append(o)))
        hooks.append(blk.register_forward_hook(lambda m, i, o: hidden.append(o)))
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(images_nhwc).permute(0, 3, 1, 2))
    finally:
        for h in hooks:
            h.remove()
    return {
        "output": out.numpy(),
        "attention": [a.numpy() for a in attention],
        "hidden": [h.numpy() for h in hidden],
    }


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())
