"""timm state dicts (torch layout, timm key names) -> vitops params + config.

timm's VisionTransformer and Eva (DINOv3) names, for every family vitops runs: Google ViT,
DeiT (and DeiT III's release files, whose LayerScale is gamma_1/gamma_2), DINO, DINOv2 with
and without registers (ViT-g's packed SwiGLU), CLIP image towers, SigLIP (the attention-pool
head) and DINOv3 (separate query and value biases, SwiGLU as fc1_g/fc1_x). The other formats
(Hugging Face, the DINOv2, DINOv3 and OpenCLIP releases) are renamed to these names first.

The architecture is read off the tensors (`structure`): which tensors exist says which
config deltas apply, their shapes say the sizes. What shapes cannot say (the activation of a
CLIP tower, a 1000-class head from a projection, a family's preprocessing) comes from
`--arch`, which is checked against everything the shapes do say. Every tensor must find its
place: an unsupported variant is an error naming what has no place.
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

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_T = lambda a: a.T  # torch Linear (out, in) -> kernel (in, out)
_FLAT = lambda a: a.reshape(-1)  # (1, 1, D) tokens -> (D,)

# timm key -> (vitops key, layout); per block, the key after "blocks.N."
_BLOCK = {
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
    "mlp.fc1_x.weight": ("mlp.fc1.kernel", _T),
    "mlp.fc1_x.bias": ("mlp.fc1.bias", None),  # SwiGLU value
    "mlp.fc1_g.weight": ("mlp.fc1_g.kernel", _T),
    "mlp.fc1_g.bias": ("mlp.fc1_g.bias", None),  # its gate
    "mlp.fc2.weight": ("mlp.fc2.kernel", _T),
    "mlp.fc2.bias": ("mlp.fc2.bias", None),
    "ls1.gamma": ("ls1.gamma", None),
    "ls2.gamma": ("ls2.gamma", None),
}
_TOP = {
    "patch_embed.proj.weight": (
        "patch_embed.kernel",
        lambda a: a.transpose(2, 3, 1, 0),
    ),  # (D,3,p,p) -> (p,p,3,D)
    "patch_embed.proj.bias": ("patch_embed.bias", None),
    "cls_token": ("cls_token", _FLAT),
    "dist_token": ("dist_token", _FLAT),
    "reg_token": ("reg_tokens", lambda a: a.reshape(a.shape[-2], a.shape[-1])),
    "pos_embed": ("pos_embed", lambda a: a.reshape(a.shape[-2], a.shape[-1])),
    "norm_pre.weight": ("norm_pre.scale", None),
    "norm_pre.bias": ("norm_pre.bias", None),
    "norm.weight": ("norm.scale", None),
    "norm.bias": ("norm.bias", None),
    "fc_norm.weight": ("fc_norm.scale", None),
    "fc_norm.bias": ("fc_norm.bias", None),
    "attn_pool.latent": ("attn_pool.latent", _FLAT),
    "attn_pool.q.weight": ("attn_pool.q.kernel", _T),
    "attn_pool.q.bias": ("attn_pool.q.bias", None),
    "attn_pool.kv.weight": ("attn_pool.kv.kernel", _T),
    "attn_pool.kv.bias": ("attn_pool.kv.bias", None),
    "attn_pool.proj.weight": ("attn_pool.proj.kernel", _T),
    "attn_pool.proj.bias": ("attn_pool.proj.bias", None),
    "attn_pool.norm.weight": ("attn_pool.norm.scale", None),
    "attn_pool.norm.bias": ("attn_pool.norm.bias", None),
    "attn_pool.mlp.fc1.weight": ("attn_pool.mlp.fc1.kernel", _T),
    "attn_pool.mlp.fc1.bias": ("attn_pool.mlp.fc1.bias", None),
    "attn_pool.mlp.fc2.weight": ("attn_pool.mlp.fc2.kernel", _T),
    "attn_pool.mlp.fc2.bias": ("attn_pool.mlp.fc2.bias", None),
    "head.weight": ("head.kernel", _T),
    "head.bias": ("head.bias", None),
    "head_dist.weight": ("head_dist.kernel", _T),
    "head_dist.bias": ("head_dist.bias", None),
    "proj.weight": ("proj.kernel", _T),  # the other formats' bias-free projection
}
# Ranks the layouts above rely on (tokens and tables as timm stores them, (1, T, D), or flat).
_NDIM = {
    "patch_embed.proj.weight": (4,),
    "pos_embed": (2, 3),
    "cls_token": (1, 2, 3),
    "dist_token": (1, 2, 3),
    "reg_token": (2, 3),
    "attn_pool.latent": (1, 2, 3),
    "proj.weight": (2,),
}
# DeiT III's release files and timm's Eva (DINOv3) name LayerScale gamma_1 and gamma_2.
_RENAMES = ((re.compile(r"^(blocks\.\d+\.)gamma_([12])$"), r"\1ls\2.gamma"),)


def normalise_names(sd: Mapping) -> dict:
    """timm's name variants in one spelling (LayerScale as lsN.gamma)."""
    out = {}
    for key, value in sd.items():
        for pattern, repl in _RENAMES:
            key = pattern.sub(repl, key)
        out[key] = value
    return out


def _rank_problems(sd: Mapping) -> list[str]:
    """Tensors whose rank does not fit their role (before any reshape relies on it)."""
    problems = []
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        sub = m.group(2) if m else key
        if key in _NDIM:
            ranks = _NDIM[key]
        elif sub in _BLOCK or key in _TOP or sub in ("attn.q_bias", "attn.v_bias"):
            ranks = (2,) if sub.endswith("weight") and "norm" not in sub else (1,)
        else:
            continue
        shape = np.shape(value)
        if len(shape) not in ranks or 0 in shape:
            problems.append(f"{key} {tuple(shape)}")
    for key in ("pos_embed", "cls_token", "reg_token", "attn_pool.latent"):
        shape = np.shape(sd[key]) if key in sd else ()
        if len(shape) == 3 and shape[0] != 1:
            problems.append(f"{key} {tuple(shape)} (expected (1, ..., dim))")
    return problems


def is_timm_state_dict(sd: Mapping) -> bool:
    return "patch_embed.proj.weight" in sd and any(k.startswith("blocks.0.") for k in sd)


def _shape(sd, key, what):
    if key not in sd:
        raise ConversionError(f"not a timm ViT state dict: no {key!r} ({what})")
    return np.shape(sd[key])


def _zero(sd, key) -> bool:
    return key in sd and not np.any(np.asarray(sd[key]))


def unplaced(sd: Mapping) -> list[str]:
    """Tensors no ViT of the family has a place for (by name)."""
    out = []
    for key in sd:
        m = _BLOCK_KEY.match(key)
        if not (
            key in _TOP or (m and (m.group(2) in _BLOCK or m.group(2) in ("attn.q_bias", "attn.v_bias")))
        ):
            out.append(key)
    return sorted(out)


def structure(sd: Mapping) -> dict:
    """What the tensors say of the architecture, as ViTConfig fields: sizes from their shapes,
    the config deltas from which tensors exist. Tensors with no place are an error first: they
    say more about an unsupported variant than a tensor it lacks."""
    unknown = unplaced(sd)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensor(s) of this checkpoint have no place in the ViT family vitops runs "
            f"(an unsupported variant?): {capped(unknown, 20)}"
        )
    problems = _rank_problems(sd)
    if problems:
        raise ConversionError(f"tensors of the wrong rank or empty for a ViT: {capped(problems)}")
    w = _shape(sd, "patch_embed.proj.weight", "the patch embedding")
    d, patch = w[0], w[-1]
    if w[-2] != patch or w[1] != 3:
        raise ConversionError(f"patch_embed.proj.weight {tuple(w)}: not RGB square patches")
    depth = len({int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))})
    if depth == 0:
        raise ConversionError("not a timm ViT state dict: no blocks.N.* tensors")
    if "blocks.0.mlp.fc1_g.weight" in sd:  # timm's SwiGLU (DINOv3 S+, H+)
        mlp, mlp_dim = "swiglu", _shape(sd, "blocks.0.mlp.fc1_g.weight", "the MLP gate")[0]
    else:
        fc1 = _shape(sd, "blocks.0.mlp.fc1.weight", "the first MLP")[0]
        fc2 = _shape(sd, "blocks.0.mlp.fc2.weight", "the second MLP")[-1]
        # fc1 twice as wide as fc2 reads: timm's packed SwiGLU (DINOv2 ViT-g), [gate | value]
        mlp, mlp_dim = ("swiglu", fc2) if fc1 == 2 * fc2 else ("mlp", fc1)
    facts = dict(
        dim=d,
        depth=depth,
        patch_size=patch,
        mlp_dim=mlp_dim,
        mlp=mlp,
        act="silu" if mlp == "swiglu" else "gelu",
        class_token="cls_token" in sd,
        distilled="dist_token" in sd,
        reg_tokens=_shape(sd, "reg_token", "registers")[-2] if "reg_token" in sd else 0,
        pre_norm="norm_pre.weight" in sd,
        patch_bias="patch_embed.proj.bias" in sd,
        qkv_bias="blocks.0.attn.qkv.bias" in sd or "blocks.0.attn.q_bias" in sd,
        layer_scale="blocks.0.ls1.gamma" in sd,
        pool="map" if "attn_pool.latent" in sd else "avg" if "fc_norm.weight" in sd else "token",
        fc_norm="fc_norm.weight" in sd and "norm.weight" not in sd,
    )
    n_classes = np.shape(sd["head.weight"])[0] if "head.weight" in sd else 0
    if "proj.weight" in sd:  # a bias-free projection, as the other formats name it (torch layout)
        facts.update(num_classes=n_classes, proj_dim=_shape(sd, "proj.weight", "the projection")[0])
    else:
        # CLIP's projection is timm's head with a zero bias (timm's OpenAI conversion writes zeros)
        projection = facts["pre_norm"] and n_classes and _zero(sd, "head.bias")
        facts.update(num_classes=0 if projection else n_classes, proj_dim=n_classes if projection else 0)
    prefix = int(facts["class_token"]) + int(facts["distilled"])
    if "pos_embed" in sd:
        rows = _shape(sd, "pos_embed", "the position embedding")[-2]
        covered = rows - prefix  # the table covers the class/distillation tokens, or only the patches
        if prefix and covered > 0 and math.isqrt(covered) ** 2 == covered:
            facts["pos_embed"], patches = "all", covered
        elif math.isqrt(rows) ** 2 == rows:
            facts["pos_embed"], patches = "patches", rows
        else:
            raise ConversionError(
                f"pos_embed has {rows} rows: neither a square grid of patches nor "
                f"{prefix} prefix token(s) plus one"
            )
        side = math.isqrt(patches) * patch
        facts["image_size"] = (side, side)
    else:  # rotary positions: timm's Eva with DINOv3's settings
        facts.update(pos_embed="none", rope_base=100.0, image_size=(256, 256))
    family = (
        "dinov3"
        if facts["pos_embed"] == "none"
        else "siglip"
        if facts["pool"] == "map"
        else "clip"
        if facts["pre_norm"]
        else "deit"
        if facts["distilled"]
        else "dinov2"
        if facts["layer_scale"] and (facts["reg_tokens"] or not n_classes)
        else "deit3"
        if facts["layer_scale"]
        else "vit"
    )
    facts["family"] = family
    facts["layer_norm_eps"] = 1e-5 if family in ("clip", "dinov3") else 1e-6
    return facts


# Facts the shapes fix, which a named architecture must agree with.
_CHECKED = (
    "dim",
    "depth",
    "patch_size",
    "mlp_dim",
    "mlp",
    "image_size",
    "distilled",
    "class_token",
    "reg_tokens",
    "pos_embed",
    "pre_norm",
    "patch_bias",
    "layer_scale",
    "pool",
    "fc_norm",
)


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
    """Architecture from the tensors; `arch` (a timm or vitops name) adds what the shapes
    cannot tell (the activation of a CLIP tower, the family, a head that is a projection) and
    is checked against them. `prefer` names the family to assume where the tensors are
    ambiguous (a DeiT or DINO release file says which it is)."""
    facts = structure(sd)
    if arch:  # the head count and the rest come from the name; what the tensors say is checked
        base = checked_arch(arch, {k: facts[k] for k in _CHECKED})
        if "proj.weight" in sd:  # a projection by name: the head, if any, is a classifier
            if base.proj_dim not in (0, facts["proj_dim"]):
                raise ConversionError(
                    f"checkpoint does not match architecture {arch!r}: a projection to "
                    f"{base.proj_dim} dims, checkpoint's has {facts['proj_dim']}"
                )
            return base.replace(num_classes=facts["num_classes"], proj_dim=facts["proj_dim"])
        heads = facts["num_classes"] + facts["proj_dim"]
        if base.proj_dim:  # the named tower ends in a projection: the checkpoint's head is it
            if heads != base.proj_dim:
                raise ConversionError(
                    f"checkpoint does not match architecture {arch!r}: a projection to "
                    f"{base.proj_dim} dims, checkpoint's head has {heads} outputs"
                )
            return base
        if facts["proj_dim"]:  # a zero-bias head of a tower named without projection: a classifier
            return base.replace(num_classes=heads)
        return base.replace(num_classes=facts["num_classes"])
    d = facts["dim"]
    if d % HEAD_DIM:
        raise ConversionError(
            f"cannot infer the head count of width {d} (not a multiple of {HEAD_DIM}); "
            "pass the architecture name with --arch"
        )
    cfg = ViTConfig(num_heads=d // HEAD_DIM, **facts)
    if cfg.family in ("vit", "deit") and prefer:
        cfg = cfg.replace(family=prefer)
    # Shapes cannot tell Google ViT from DeiT, nor a headless ViT from DINO: prefer DINO for
    # a headless model of a DINO size, else Google ViT (for preprocessing; --arch overrides).
    # what shapes fix, compared field by field (a variant differs in act, eps, family, the head)
    shaped = ("num_heads", "qkv_bias", *_CHECKED)
    named = [
        v
        for v in VARIANTS.values()
        if all(getattr(v, f) == getattr(cfg, f) for f in shaped)
        and not (facts["num_classes"] and v.family == "dino")
    ]
    order = (
        ("deit",) if cfg.distilled else ("dino", "vit", "deit") if not cfg.num_classes else ("vit", "deit")
    )
    if prefer:
        order = (prefer, *order)
    named.sort(key=lambda v: (order.index(v.family) if v.family in order else len(order), v.act != cfg.act))
    if not named:
        return cfg
    family = prefer if prefer and cfg.family in ("vit", "deit", "dino") else named[0].family
    return cfg.replace(name=named[0].name, family=family)


def _qkv_bias(sd, i: int):
    """timm Eva's separate query and value biases as one qkv bias; the key's is zero (DINOv3
    has none, and its release masks the stored one out)."""
    q, v = np.asarray(sd[f"blocks.{i}.attn.q_bias"]), np.asarray(sd[f"blocks.{i}.attn.v_bias"])
    return np.concatenate([q, np.zeros_like(q), v])


def timm_to_vitops(
    sd: Mapping[str, np.ndarray],
    arch: str | None = None,
    config: ViTConfig | None = None,
    prefer: str | None = None,
):
    """Convert a timm-named state dict. Returns (params, config); every source tensor must be
    used, so an unsupported variant is an error naming the tensors that have no place.
    config, when given (e.g. from a Hugging Face config.json), replaces shape inference."""
    sd = normalise_names(sd)
    config = config or infer_config(sd, arch, prefer)
    problems = _rank_problems(sd)
    if problems:
        raise ConversionError(f"tensors of the wrong rank or empty for a ViT: {capped(problems)}")
    params, unknown = {}, []
    for key, value in sd.items():
        m = _BLOCK_KEY.match(key)
        sub = m.group(2) if m else None
        arr = np.asarray(value, dtype=np.float32)
        if m and sub in ("attn.q_bias", "attn.v_bias"):
            if sub == "attn.q_bias":
                params[f"blocks.{m.group(1)}.attn.qkv.bias"] = _qkv_bias(sd, int(m.group(1))).astype(
                    np.float32
                )
            continue
        if (
            m
            and sub == "mlp.fc1.weight"
            and config.mlp == "swiglu"
            and f"blocks.{m.group(1)}.mlp.fc1_g.weight" not in sd
        ):
            gate, val = np.split(arr, 2, axis=0)  # timm's packed SwiGLU: [gate | value] rows
            params[f"blocks.{m.group(1)}.mlp.fc1_g.kernel"] = np.ascontiguousarray(gate.T)
            params[f"blocks.{m.group(1)}.mlp.fc1.kernel"] = np.ascontiguousarray(val.T)
            continue
        if (
            m
            and sub == "mlp.fc1.bias"
            and config.mlp == "swiglu"
            and f"blocks.{m.group(1)}.mlp.fc1_g.bias" not in sd
        ):
            gate, val = np.split(arr, 2)
            params[f"blocks.{m.group(1)}.mlp.fc1_g.bias"], params[f"blocks.{m.group(1)}.mlp.fc1.bias"] = (
                gate,
                val,
            )
            continue
        if m and sub in _BLOCK:
            new, fn = _BLOCK[sub]
            new = f"blocks.{m.group(1)}.{new}"
        elif key in ("head.weight", "head.bias") and config.proj_dim and "proj.weight" not in sd:
            if key == "head.bias":  # a projection has none: timm's zero bias goes, a real one is refused
                if np.any(arr):
                    raise ConversionError(
                        f"the checkpoint's head has a bias, so it is not the bias-free "
                        f"projection of {config.name or 'this architecture'}"
                    )
                continue
            new, fn = "proj.kernel", _T
        elif key in _TOP:
            new, fn = _TOP[key]
        else:
            unknown.append(key)
            continue
        params[new] = np.ascontiguousarray(fn(arr) if fn else arr)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensor(s) of this checkpoint have no place in the ViT family vitops runs "
            f"(an unsupported variant?): {capped(sorted(unknown), 20)}"
        )
    return params, config
