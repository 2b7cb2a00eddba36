"""timm / DeiT / DINO state dicts (torch layout, timm key names) -> vitops params + config.

Also the format of the DeiT and DINO release files once unwrapped: they use timm's names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from ..core.config import ViTConfig
from ..core.variants import HEAD_DIM, VARIANTS, get_config
from ..errors import capped
from .checkpoint_files import ConversionError

# timm key -> (vitops key, how to lay the array out for the forward pass)
_T = lambda a: a.T
_BLOCK_MAP = {
    "norm1.weight": ("norm1.scale", None),
    "norm1.bias": ("norm1.bias", None),
    "attn.qkv.weight": ("attn.qkv.kernel", _T),
    "attn.qkv.bias": ("attn.qkv.bias", None),
    "attn.proj.weight": ("attn.proj.kernel", _T),
    "attn.proj.bias": ("attn.proj.bias", None),
    "norm2.weight": ("norm2.scale", None),
    "norm2.bias": ("norm2.bias", None),
    "mlp.fc1.weight": ("mlp.fc1.kernel", _T),
    "mlp.fc1.bias": ("mlp.fc1.bias", None),
    "mlp.fc2.weight": ("mlp.fc2.kernel", _T),
    "mlp.fc2.bias": ("mlp.fc2.bias", None),
}
_TOP_MAP = {
    # conv (D, 3, P, P) OIHW -> (P, P, 3, D) HWIO
    "patch_embed.proj.weight": ("patch_embed.kernel", lambda a: a.transpose(2, 3, 1, 0)),
    "patch_embed.proj.bias": ("patch_embed.bias", None),
    "cls_token": ("cls_token", lambda a: a.reshape(-1)),
    "dist_token": ("dist_token", lambda a: a.reshape(-1)),
    "pos_embed": ("pos_embed", lambda a: a.reshape(a.shape[-2], a.shape[-1])),
    "norm.weight": ("norm.scale", None),
    "norm.bias": ("norm.bias", None),
    "head.weight": ("head.kernel", _T),
    "head.bias": ("head.bias", None),
    "head_dist.weight": ("head_dist.kernel", _T),
    "head_dist.bias": ("head_dist.bias", None),
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
# Ranks the layouts above rely on (pos_embed: (1, T, D) as timm stores it, or (T, D)).
_NDIM = {
    "patch_embed.proj.weight": (4,),
    "pos_embed": (2, 3),
    "cls_token": (1, 2, 3),
    "dist_token": (1, 2, 3),
    "head.weight": (2,),
    "head_dist.weight": (2,),
}


def _rank_problems(sd: Mapping) -> list[str]:
    """Tensors whose rank does not fit their role (before any reshape relies on it)."""
    problems = []
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        sub = m.group(2) if m else key
        if key in _NDIM:
            ranks = _NDIM[key]
        elif sub in _BLOCK_MAP or key in _TOP_MAP:
            ranks = (2,) if sub.endswith("weight") and "norm" not in sub else (1,)
        else:
            continue
        shape = np.shape(value)
        if len(shape) not in ranks or 0 in shape:
            problems.append(f"{key} {tuple(shape)}")
    pos = np.shape(sd["pos_embed"]) if "pos_embed" in sd else ()
    if len(pos) == 3 and pos[0] != 1:
        problems.append(f"pos_embed {tuple(pos)} (expected (1, tokens, dim))")
    return problems


def is_timm_state_dict(sd: Mapping) -> bool:
    return "patch_embed.proj.weight" in sd and "pos_embed" in sd


def _require(sd, key, what):
    if key not in sd:
        raise ConversionError(f"not a timm ViT state dict: no {key!r} ({what})")
    return np.shape(sd[key])


def _check_ranks(sd: Mapping) -> None:
    problems = _rank_problems(sd)
    if problems:
        raise ConversionError(f"tensors of the wrong rank or empty for a ViT: {capped(problems)}")


def checked_arch(arch: str, facts: Mapping[str, object]) -> ViTConfig:
    """The named architecture's config, after checking every fact read from a checkpoint
    (config field -> value) against it; a mismatch names each differing field."""
    base = get_config(arch)
    clash = [
        f"{k}: {arch} has {getattr(base, k)}, checkpoint has {v}"
        for k, v in facts.items()
        if getattr(base, k) != v
    ]
    if clash:
        raise ConversionError(f"checkpoint does not match architecture {arch!r}: " + "; ".join(clash))
    return base


def infer_config(
    sd: Mapping[str, np.ndarray], arch: str | None = None, prefer: str | None = None
) -> ViTConfig:
    """Architecture from the tensors' shapes; `arch` (a timm or vitops name) adds what shapes
    cannot tell (head count, family) and is checked against them. `prefer` names the family to
    assume where shapes are ambiguous (a DeiT or DINO release file says which it is)."""
    _check_ranks(sd)
    d = _require(sd, "cls_token", "the class token")[-1]
    patch = _require(sd, "patch_embed.proj.weight", "the patch embedding")[-1]
    tokens = _require(sd, "pos_embed", "the position embedding")[-2]
    depth = len({int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))})
    if depth == 0:
        raise ConversionError("not a timm ViT state dict: no blocks.N.* tensors")
    mlp_dim = _require(sd, "blocks.0.mlp.fc1.weight", "the first MLP")[0]
    distilled = "dist_token" in sd
    num_classes = np.shape(sd["head.weight"])[0] if "head.weight" in sd else 0
    grid = tokens - (2 if distilled else 1)
    side = math.isqrt(grid)
    if side * side != grid:
        raise ConversionError(f"pos_embed has {tokens} tokens: {grid} patch positions are not a square grid")
    shape_facts = dict(
        dim=d, depth=depth, patch_size=patch, mlp_dim=mlp_dim, image_size=(side * patch, side * patch)
    )
    if arch:  # the head count comes from the name; everything the shapes say is checked
        return checked_arch(arch, dict(shape_facts, distilled=distilled)).replace(num_classes=num_classes)
    if d % HEAD_DIM:
        raise ConversionError(
            f"cannot infer the head count of width {d} (not a multiple of "
            f"{HEAD_DIM}); pass the architecture name with --arch"
        )
    cfg = ViTConfig(
        num_heads=d // HEAD_DIM,
        num_classes=num_classes,
        distilled=distilled,
        family="deit" if distilled else "vit",
        **shape_facts,
    )
    # Shapes cannot tell Google ViT from DeiT, nor a headless ViT from DINO: prefer DINO for
    # a headless model of a DINO size, else Google ViT (for preprocessing; --arch overrides).
    blank = dict(name="", family="vit", num_classes=0)
    named = [
        v
        for v in VARIANTS.values()
        if v.replace(**blank) == cfg.replace(**blank) and not (num_classes and v.family == "dino")
    ]  # a DINO backbone has no head
    order = ("deit",) if distilled else (("dino", "vit", "deit") if num_classes == 0 else ("vit", "deit"))
    if prefer:
        order = (prefer, *order)
    named.sort(key=lambda v: order.index(v.family) if v.family in order else len(order))
    if not named:
        return cfg.replace(family=prefer or cfg.family)
    return cfg.replace(name=named[0].name, family=prefer or named[0].family)


def timm_to_vitops(
    sd: Mapping[str, np.ndarray],
    arch: str | None = None,
    config: ViTConfig | None = None,
    prefer: str | None = None,
):
    """Convert a timm-named state dict. Returns (params, config); every source tensor must be
    used, so an unsupported variant (layer scale, registers, fc_norm...) is an error.
    config, when given (e.g. from a Hugging Face config.json), replaces shape inference."""
    config = config or infer_config(sd, arch, prefer)
    _check_ranks(sd)
    params, unknown = {}, []
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        if m and m.group(2) in _BLOCK_MAP:
            new, fn = _BLOCK_MAP[m.group(2)]
            new = f"blocks.{m.group(1)}.{new}"
        elif key in _TOP_MAP:
            new, fn = _TOP_MAP[key]
        else:
            unknown.append(key)
            continue
        arr = np.asarray(value, dtype=np.float32)
        params[new] = np.ascontiguousarray(fn(arr) if fn else arr)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensor(s) of this checkpoint have no place in a plain ViT/DeiT/DINO "
            f"(unsupported variant?): {capped(sorted(unknown), 20)}"
        )
    return params, config
