"""Google's .npz checkpoints (google-research/vision_transformer, augreg and original releases;
big_vision's `params/` prefix and "scan" stacking) -> vitops params + ViTConfig.

Kernels are Flax's (in, out), so they go in as they are; attention kernels are (D, H, Dh) and
(H, Dh, D) and are flattened head-major, which is timm's qkv layout. The ImageNet-21k releases
have a pre-logits layer (dense + tanh) before the head, kept as `representation_size`.
"""

from __future__ import annotations

import re

import numpy as np

from ..config import ViTConfig
from ._io import ConversionError

_BLOCK = re.compile(r"^Transformer/encoderblock(?:_(\d+))?/(.+)$")


# Where the releases put the model: plain, old training checkpoints, big_vision, big_vision
# image towers (the prefixes timm's .npz loader also recognises).
_PREFIXES = ("opt/target/", "params/img/", "params/", "")


def _prefix(sd) -> str | None:
    return next((p for p in _PREFIXES if f"{p}embedding/kernel" in sd), None)


def is_npz_dict(sd) -> bool:
    return _prefix(sd) is not None


def _blocks(sd):
    """{block index: {sub-key: array}}, unstacking scanned checkpoints."""
    blocks: dict[int, dict[str, np.ndarray]] = {}
    for key, value in sd.items():
        m = _BLOCK.match(key)
        if not m:
            continue
        index, rest = m.groups()
        if index is None:  # scan: one stacked array for all blocks, depth first
            for i in range(value.shape[0]):
                blocks.setdefault(i, {})[rest] = value[i]
        else:
            blocks.setdefault(int(index), {})[rest] = value
    return blocks


def _pick(block, pattern, i):
    keys = sorted(k for k in block if re.fullmatch(pattern, k))
    if not keys:
        raise ConversionError(f"encoder block {i}: no tensor matches {pattern!r}")
    return keys


def npz_to_vitops(sd, family: str = "vit", name: str = ""):
    prefix = _prefix(sd)
    if prefix is None:
        raise ConversionError("not a Google ViT checkpoint: no embedding/kernel")
    sd = {k[len(prefix):]: np.asarray(v, np.float32) for k, v in sd.items() if k.startswith(prefix)}
    used = set()

    def take(key):
        if key not in sd:
            raise ConversionError(f"Google checkpoint has no {key!r}")
        used.add(key)
        return sd[key]

    blocks = _blocks(sd)
    used.update(k for k in sd if _BLOCK.match(k))
    if sorted(blocks) != list(range(len(blocks))):
        raise ConversionError(f"encoder blocks are not numbered 0..N-1: {sorted(blocks)}")
    kernel = take("embedding/kernel")  # (P, P, 3, D) HWIO, as vitops stores it
    p, d = kernel.shape[0], kernel.shape[-1]
    pos_key = next((k for k in ("Transformer/posembed_input/pos_embedding", "pos_embedding") if k in sd), None)
    if pos_key is None:
        raise ConversionError("Google checkpoint has no position embedding")
    pos = take(pos_key).reshape(-1, d)
    params = {"patch_embed.kernel": kernel, "patch_embed.bias": take("embedding/bias"),
              "cls_token": take("cls").reshape(d), "pos_embed": pos,
              "norm.scale": take("Transformer/encoder_norm/scale"),
              "norm.bias": take("Transformer/encoder_norm/bias")}
    heads = mlp_dim = None
    for i, b in sorted(blocks.items()):
        # The old releases number sub-modules LayerNorm_0, MultiHeadDotProductAttention_1,
        # LayerNorm_2, MlpBlock_3; big_vision LayerNorm_0/1, MultiHeadDotProductAttention_0,
        # MlpBlock_0. Order, not number, tells the two LayerNorms apart.
        norms = sorted({k.split("/")[0] for k in _pick(b, r"LayerNorm_\d+/scale", i)},
                       key=lambda s: int(s.split("_")[1]))
        attn = _pick(b, r"MultiHeadDotProductAttention_\d+/query/kernel", i)[0].split("/")[0]
        mlp = _pick(b, r"MlpBlock_\d+/Dense_0/kernel", i)[0].split("/")[0]
        if len(norms) != 2:
            raise ConversionError(f"encoder block {i}: expected 2 LayerNorms, found {norms}")
        q = b[f"{attn}/query/kernel"]  # (D, H, Dh)
        heads = q.shape[1]
        qkv_k = [b[f"{attn}/{n}/kernel"].reshape(d, d) for n in ("query", "key", "value")]
        qkv_b = [b[f"{attn}/{n}/bias"].reshape(d) for n in ("query", "key", "value")]
        pre = f"blocks.{i}."
        params.update({
            pre + "norm1.scale": b[f"{norms[0]}/scale"], pre + "norm1.bias": b[f"{norms[0]}/bias"],
            pre + "norm2.scale": b[f"{norms[1]}/scale"], pre + "norm2.bias": b[f"{norms[1]}/bias"],
            pre + "attn.qkv.kernel": np.concatenate(qkv_k, axis=1),
            pre + "attn.qkv.bias": np.concatenate(qkv_b),
            pre + "attn.proj.kernel": b[f"{attn}/out/kernel"].reshape(d, d),
            pre + "attn.proj.bias": b[f"{attn}/out/bias"],
            pre + "mlp.fc1.kernel": b[f"{mlp}/Dense_0/kernel"], pre + "mlp.fc1.bias": b[f"{mlp}/Dense_0/bias"],
            pre + "mlp.fc2.kernel": b[f"{mlp}/Dense_1/kernel"], pre + "mlp.fc2.bias": b[f"{mlp}/Dense_1/bias"],
        })
        mlp_dim = b[f"{mlp}/Dense_0/kernel"].shape[1]
    representation = 0
    if "pre_logits/kernel" in sd:
        params["pre_logits.kernel"] = take("pre_logits/kernel")
        params["pre_logits.bias"] = take("pre_logits/bias")
        representation = params["pre_logits.kernel"].shape[1]
    num_classes = 0
    if "head/kernel" in sd and sd["head/kernel"].shape[-1] > 0:
        params["head.kernel"] = take("head/kernel")
        params["head.bias"] = take("head/bias")
        num_classes = params["head.kernel"].shape[1]
    else:
        used.update(k for k in ("head/kernel", "head/bias") if k in sd)
    unknown = sorted(set(sd) - used)
    if unknown:
        raise ConversionError(f"{len(unknown)} tensor(s) of this Google checkpoint have no place in a "
                              f"ViT: {', '.join(unknown[:20])}")
    grid = pos.shape[0] - 1
    side = int(round(np.sqrt(grid)))
    if side * side != grid:
        raise ConversionError(f"pos_embedding has {pos.shape[0]} tokens: not CLS plus a square grid")
    config = ViTConfig(image_size=side * p, patch_size=p, dim=d, depth=len(blocks), num_heads=heads,
                       mlp_dim=mlp_dim, num_classes=num_classes, representation_size=representation,
                       family=family, name=name)
    return params, config
