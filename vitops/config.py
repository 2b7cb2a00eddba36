"""ViTConfig: the architecture of one model, and the table of named variants.

A config is everything the forward pass needs besides the arrays. It is frozen and
JSON-serialisable, because it travels inside every vitops weight file.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

# Model families decide preprocessing (see preprocess notes in DESIGN.md) and nothing else:
# DeiT and DINO are config deltas of the same ViT, not separate code.
FAMILIES = ("vit", "deit", "dino")
POS_INTERP_MODES = ("timm", "dino")


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a Vision Transformer.

    image_size is the native (training) resolution: the position-embedding table holds one
    entry per patch of that grid, plus the prefix tokens. Other resolutions are accepted at
    call time and the table is resampled (``pos_interp``: "timm" or "dino").
    """

    image_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_classes: int = 1000  # 0: headless, the model returns features
    distilled: bool = False  # DeiT: a distillation token and a second head
    representation_size: int = 0  # Google's ImageNet-21k releases: dense + tanh before the head
    layer_norm_eps: float = 1e-6  # timm / DeiT / DINO / Google ViT; HF configs say 1e-12
    family: str = "vit"  # "vit" (Google), "deit", "dino": decides preprocessing
    pos_interp: str = "timm"  # how pos_embed is resampled for other image sizes
    name: str = ""

    def __post_init__(self):
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        object.__setattr__(self, "image_size", tuple(int(s) for s in size))
        problems = []
        if len(self.image_size) != 2:
            problems.append(f"image_size must be an int or (height, width), got {size!r}")
        elif any(s % self.patch_size for s in self.image_size):
            problems.append(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.num_heads <= 0 or self.dim % self.num_heads:
            problems.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        for field in ("patch_size", "dim", "depth", "mlp_dim"):
            if getattr(self, field) <= 0:
                problems.append(f"{field} must be positive, got {getattr(self, field)}")
        if self.representation_size < 0:
            problems.append(f"representation_size must be >= 0, got {self.representation_size}")
        if self.representation_size and self.distilled:
            problems.append("a distilled model has no pre-logits layer")
        if self.num_classes < 0:
            problems.append(f"num_classes must be >= 0, got {self.num_classes}")
        if self.family not in FAMILIES:
            problems.append(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.pos_interp not in POS_INTERP_MODES:
            problems.append(f"pos_interp must be one of {POS_INTERP_MODES}, got {self.pos_interp!r}")
        if problems:
            raise ValueError("invalid ViTConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        return 2 if self.distilled else 1

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        gh, gw = self.grid_size
        return self.num_prefix_tokens + gh * gw

    def replace(self, **changes) -> "ViTConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ViTConfig":
        d = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig fields: {unknown}")
        return cls(**d)


# (dim, depth, heads) of the standard sizes. Every one has head_dim 64, which is why a
# checkpoint's head count can be inferred from its width (ViT paper, Table 1; DeiT Table 1).
SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}
HEAD_DIM = 64


def _variant(size: str, patch: int, res: int, **kw) -> ViTConfig:
    dim, depth, heads = SIZES[size]
    return ViTConfig(
        image_size=(res, res), patch_size=patch, dim=dim, depth=depth, num_heads=heads,
        mlp_dim=4 * dim, **kw,
    )


def _build_variants() -> dict[str, ViTConfig]:
    table: dict[str, ViTConfig] = {}
    # Names follow timm's architecture names so a timm tag converts without a lookup table.
    for size in ("tiny", "small", "base", "large", "huge"):
        for patch in (8, 14, 16, 32):
            for res in (224, 384):
                if res % patch:
                    continue
                name = f"vit_{size}_patch{patch}_{res}"
                table[name] = _variant(size, patch, res, family="vit", name=name)
    for size in ("tiny", "small", "base"):
        for res in (224, 384):
            name = f"deit_{size}_patch16_{res}"
            table[name] = _variant(size, 16, res, family="deit", name=name)
            name = f"deit_{size}_distilled_patch16_{res}"
            table[name] = _variant(size, 16, res, family="deit", distilled=True, name=name)
    # DINO backbones: no head; the output is the CLS token after the final LayerNorm.
    for short, size in (("s", "small"), ("b", "base")):
        for patch in (16, 8):
            name = f"dino_vit{short}{patch}"
            table[name] = _variant(size, patch, 224, family="dino", num_classes=0, name=name)
    return table


VARIANTS: dict[str, ViTConfig] = _build_variants()


def get_config(name: str) -> ViTConfig:
    """Config of a named variant.

    Accepts vitops names (``dino_vitb16``) and timm names with or without a pretrained tag
    (``vit_small_patch16_224.augreg_in21k_ft_in1k``, ``vit_base_patch8_224.dino``).
    """
    base, _, tag = name.partition(".")
    if tag.startswith("dino") and base in VARIANTS:
        cfg = VARIANTS[base]
        short = {"small": "s", "base": "b"}.get(base.split("_")[1])
        dino_name = f"dino_vit{short}{cfg.patch_size}" if short else None
        if dino_name in VARIANTS:
            return VARIANTS[dino_name]
        return cfg.replace(family="dino", num_classes=0, name=name)
    if base in VARIANTS:
        return VARIANTS[base]
    close = [n for n in VARIANTS if base.split("_")[0] in n][:8]
    raise KeyError(f"unknown architecture {name!r}; known names include {close or list(VARIANTS)[:8]} "
                   "(`vitops models` lists them all)")
