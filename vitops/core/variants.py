"""The named architectures: every configuration of the family that a released checkpoint has.

Names follow timm's architecture names, so a timm tag converts without a lookup table; the DINO
backbones also go by the names of their release files' hub entries (``dino_vitb16``). A name
that no release uses is not listed: `vitops models` shows what can actually be downloaded and
converted, and `--arch` refuses a combination that no checkpoint has.
"""

from __future__ import annotations

from ..errors import ConfigError, capped, clip
from .config import MAX_NAME_CHARS, ViTConfig

# (D, L, H) of the standard sizes. Every one has head width 64, which is why a checkpoint's
# head count can be inferred from its width (ViT paper, Table 1; DeiT, Table 1).
SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1536, 40, 24),  # DINOv2's ViT-g/14
    "small_plus": (384, 12, 6),  # DINOv3's ViT-S+ (a SwiGLU MLP)
    "huge_plus": (1280, 32, 20),  # DINOv3's ViT-H+
}
HEAD_DIM = 64

# (size, patch, resolution) of each released checkpoint's architecture. Google ViT and AugReg
# (google-research/vision_transformer; timm's *.orig_in21k*, *.augreg*): timm's pretrained tags.
_VIT = [
    ("tiny", 16, 224),
    ("tiny", 16, 384),
    ("small", 16, 224),
    ("small", 16, 384),
    ("small", 32, 224),
    ("small", 32, 384),
    ("base", 8, 224),
    ("base", 16, 224),
    ("base", 16, 384),
    ("base", 32, 224),
    ("base", 32, 384),
    ("large", 16, 224),
    ("large", 16, 384),
    ("large", 32, 224),
    ("large", 32, 384),
    ("huge", 14, 224),
]
# DeiT (facebookresearch/deit README): Ti/S/B at 224, B at 384, each plain and distilled.
_DEIT = [("tiny", 224), ("small", 224), ("base", 224), ("base", 384)]
# DINO (facebookresearch/dino README): ViT-S and ViT-B backbones, patch 16 and 8, no head.
_DINO = [("s", "small", 16), ("s", "small", 8), ("b", "base", 16), ("b", "base", 8)]
# DeiT III (facebookresearch/deit README_revenge.md): S, B, L at 224 and 384 px.
_DEIT3 = [("small", 224), ("small", 384), ("base", 224), ("base", 384), ("large", 224), ("large", 384)]
# DINOv2 (facebookresearch/dinov2 README): S, B, L, g at 518 px, with and without registers;
# ViT-g has a SwiGLU MLP of (int(4 D 2/3) + 7) // 8 * 8 = 4096 units per branch.
_DINOV2 = ["small", "base", "large", "giant"]
# DINOv3 (facebookresearch/dinov3 README; timm eva.py): S, S+, B, L, H+ at 256 px, with (_qkvb)
# and without query and value biases; S+ and H+ have SwiGLU MLPs (1536 and 5120 units).
_DINOV3 = {"small": 0, "small_plus": 1536, "base": 0, "large": 0, "huge_plus": 5120}


def _variant(size: str, patch: int, res: int, **fields) -> ViTConfig:
    dim, depth, heads = SIZES[size]
    fields.setdefault("mlp_dim", 4 * dim)
    return ViTConfig(image_size=(res, res), patch_size=patch, dim=dim, depth=depth, num_heads=heads, **fields)


def _build() -> dict[str, ViTConfig]:
    table: dict[str, ViTConfig] = {}
    for size, patch, res in _VIT:
        name = f"vit_{size}_patch{patch}_{res}"
        table[name] = _variant(size, patch, res, family="vit", name=name)
    for size, res in _DEIT:
        for distilled in (False, True):
            name = f"deit_{size}{'_distilled' if distilled else ''}_patch16_{res}"
            table[name] = _variant(size, 16, res, family="deit", distilled=distilled, name=name)
    for short, size, patch in _DINO:
        name = f"dino_vit{short}{patch}"
        table[name] = _variant(size, patch, 224, family="dino", num_classes=0, name=name)
    for size, res in _DEIT3:
        name = f"deit3_{size}_patch16_{res}"
        table[name] = _variant(
            size, 16, res, family="deit3", layer_scale=True, pos_embed="patches", name=name
        )
    for size in _DINOV2:
        glu = dict(mlp="swiglu", act="silu", mlp_dim=4096) if size == "giant" else {}
        for regs in (0, 4):
            name = f"vit_{size}_patch14{'_reg4' if regs else ''}_dinov2"
            table[name] = _variant(
                size,
                14,
                518,
                family="dinov2",
                num_classes=0,
                layer_scale=True,
                reg_tokens=regs,
                pos_embed="patches" if regs else "all",
                name=name,
                **glu,
            )
    # CLIP image towers (Radford et al. 2021): a LayerNorm before the blocks, no patch bias, eps
    # 1e-5. OpenAI's weights use QuickGELU and end in a bias-free projection (512 for B/16, 768
    # for L/14); timm's CLIP names without "quickgelu" are the GELU towers (LAION, DataComp).
    for size, patch, embed in (("base", 16, 512), ("large", 14, 768)):
        clip = dict(family="clip", pre_norm=True, patch_bias=False, layer_norm_eps=1e-5)
        name = f"vit_{size}_patch{patch}_clip_224"
        table[name] = _variant(size, patch, 224, name=name, **clip)
        name = f"vit_{size}_patch{patch}_clip_quickgelu_224"
        table[name] = _variant(
            size, patch, 224, name=name, act="quick_gelu", num_classes=0, proj_dim=embed, **clip
        )
    # SigLIP (Zhai et al. 2023): no class token, multihead attention pooling; timm's tower uses
    # the exact GELU (Hugging Face's the tanh one: its config says so at conversion).
    name = "vit_base_patch16_siglip_224"
    table[name] = _variant(
        "base",
        16,
        224,
        family="siglip",
        class_token=False,
        pos_embed="patches",
        pool="map",
        num_classes=0,
        name=name,
    )
    for size, glu_dim in _DINOV3.items():
        for qkvb in (False, True):
            name = f"vit_{size}_patch16_dinov3{'_qkvb' if qkvb else ''}"
            mlp = dict(mlp="swiglu", act="silu", mlp_dim=glu_dim) if glu_dim else {}
            table[name] = _variant(
                size,
                16,
                256,
                family="dinov3",
                num_classes=0,
                reg_tokens=4,
                pos_embed="none",
                rope_base=100.0,
                layer_scale=True,
                layer_norm_eps=1e-5,
                qkv_bias=qkvb,
                name=name,
                **mlp,
            )
    return table


VARIANTS: dict[str, ViTConfig] = _build()
# timm's names of the DINO backbones ("vit_small_patch16_224.dino") -> vitops' names
_DINO_TAGS = {f"vit_{size}_patch{patch}_224": f"dino_vit{short}{patch}" for short, size, patch in _DINO}


def get_config(name: str) -> ViTConfig:
    """Config of a named variant.

    Accepts vitops names (``dino_vitb16``) and timm names with or without a pretrained tag
    (``vit_small_patch16_224.augreg_in21k_ft_in1k``, ``vit_base_patch8_224.dino``).
    An unknown name raises ConfigError.
    """
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_CHARS:
        raise ConfigError(
            f"an architecture name must be a non-empty string of at most "
            f"{MAX_NAME_CHARS} characters, got {clip(name)}"
        )
    base, _, tag = name.partition(".")
    if tag.startswith("dino") and base in _DINO_TAGS:
        return VARIANTS[_DINO_TAGS[base]]
    if base in VARIANTS:
        return VARIANTS[base]
    close = [n for n in VARIANTS if base.split("_")[0] in n] or list(VARIANTS)
    raise ConfigError(
        f"unknown architecture {clip(name)}; known names include {capped(close, 8)} "
        "(`vitops models` lists them all)"
    )
