"""ViTConfig: the architecture of one model, and the table of named variants.

A config is everything the forward pass needs besides the arrays. It is frozen and
JSON-serialisable, because it travels inside every vitops weight file. Every config, however
it arrives (a weight file's metadata, a Hugging Face config.json, an --arch name, a Python
caller), passes the one validation in `config_problems`.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, capped, clip
from ..io.bounded_json import parse_object
from ..io.schema import finite

# Model families decide preprocessing (see preprocess.py) and nothing else: DeiT and DINO are
# config deltas of the same ViT, not separate code.
FAMILIES = ("vit", "deit", "dino")
POS_INTERP_MODES = ("timm", "dino")

# Bounds on every size (inclusive). They admit every plain ViT published up to ViT-G/14 and
# ViT-e (Zhai et al. 2022, "Scaling Vision Transformers", Table 2: width <= 1792, depth <= 56,
# MLP <= 15360, 16 heads) at up to 1024 px, e.g. ViT-H/14 and ViT-g/14 at 518 px (DINOv2).
# ViT-22B (Dehghani et al. 2023: width 6144, 48 heads, MLP 24576) is beyond them, on purpose:
# without bounds a 500 KB file claiming a million blocks makes the loader build a million-block
# parameter table before any tensor is compared.
LIMITS = {
    "patch_size": (1, 64),
    "image_side": (1, 1024),  # each of image_size's height and width, in pixels
    "dim": (1, 2048),
    "depth": (1, 64),
    "num_heads": (1, 64),
    "mlp_dim": (1, 16384),
    "num_classes": (0, 100_000),  # 0: headless; ImageNet-21k has 21,843
    "representation_size": (0, 4096),  # 0: none; Google's 21k pre-logits are the width
}
# Patches per image at the native size: (1024 / 8)^2. Attention is quadratic in it.
MAX_PATCHES = 128 * 128
# LayerNorm eps: timm/DeiT/DINO/Google use 1e-6, Hugging Face configs 1e-12. Below 1e-12 a
# float32 eps is no protection against a zero variance; above 0.1 it rescales activations.
LAYER_NORM_EPS_RANGE = (1e-12, 0.1)
MAX_NAME_CHARS = 200
# A config's JSON is about 300 characters (a name included); anything far longer is not one.
MAX_CONFIG_CHARS = 4096

_INT_FIELDS = ("patch_size", "dim", "depth", "num_heads", "mlp_dim", "num_classes", "representation_size")


def _is_int(value) -> bool:
    # Exact integers only: 64.0 and True are not sizes (numpy integers are).
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and type(value).__name__ != "bool_"
    )


def _as_size(value):
    """image_size as given -> (h, w) of ints, or None when it is not an int or an int pair."""
    if _is_int(value):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def config_problems(fields: Mapping[str, Any], names: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of these config values (ViTConfig field -> value), as readable lines:
    types first, then ranges, then the relations between fields, so no check ever computes
    with a value of the wrong type. `names` renames fields in the messages (a Hugging Face
    config calls dim "hidden_size")."""
    names = names or {}

    def name(field):
        return names.get(field, field)

    problems = []
    for field in _INT_FIELDS:
        if field not in fields:
            continue
        value = fields[field]
        low, high = LIMITS[field]
        if not _is_int(value):
            problems.append(f"{name(field)} must be an integer, got {clip(value)} ({type(value).__name__})")
        elif not low <= value <= high:
            problems.append(f"{name(field)} must be in [{low}, {high:,}], got {clip(value)}")
    size = None
    if "image_size" in fields:
        size = _as_size(fields["image_size"])
        low, high = LIMITS["image_side"]
        if size is None:
            problems.append(
                f"{name('image_size')} must be an integer or [height, width] integers, "
                f"got {clip(fields['image_size'])}"
            )
        elif not all(low <= s <= high for s in size):
            problems.append(f"{name('image_size')} sides must be in [{low}, {high}], got {list(size)}")
            size = None
    if "layer_norm_eps" in fields:
        eps = fields["layer_norm_eps"]
        eps_low, eps_high = LAYER_NORM_EPS_RANGE
        if not isinstance(eps, numbers.Real) or isinstance(eps, bool) or type(eps).__name__ == "bool_":
            problems.append(
                f"{name('layer_norm_eps')} must be a number, got {clip(eps)} ({type(eps).__name__})"
            )
        elif not (finite(eps) and eps_low <= float(eps) <= eps_high):
            problems.append(
                f"{name('layer_norm_eps')} must be in [{eps_low:g}, {eps_high:g}], got {clip(eps)}"
            )
    if "distilled" in fields and not isinstance(fields["distilled"], bool):
        problems.append(f"{name('distilled')} must be true or false, got {clip(fields['distilled'])}")
    for field, allowed in (("family", FAMILIES), ("pos_interp", POS_INTERP_MODES)):
        if field in fields and fields[field] not in allowed:
            problems.append(f"{name(field)} must be one of {', '.join(allowed)}; got {clip(fields[field])}")
    if "name" in fields:
        if not isinstance(fields["name"], str):
            problems.append(f"{name('name')} must be a string, got {clip(fields['name'])}")
        elif len(fields["name"]) > MAX_NAME_CHARS:
            problems.append(f"{name('name')} is longer than {MAX_NAME_CHARS} characters")
    if problems:  # the relations below need every value to be of its type and in range
        return problems
    get = fields.get
    dim, heads = get("dim"), get("num_heads")
    if dim is not None and heads is not None and dim % heads:
        problems.append(f"{name('dim')} {dim} is not divisible by {name('num_heads')} {heads}")
    patch = get("patch_size")
    if size is not None and patch is not None:
        if any(s % patch for s in size):
            problems.append(
                f"{name('image_size')} {list(size)} is not a multiple of {name('patch_size')} {patch}"
            )
        elif (size[0] // patch) * (size[1] // patch) > MAX_PATCHES:
            problems.append(
                f"{name('image_size')} {list(size)} at {name('patch_size')} {patch} makes "
                f"{(size[0] // patch) * (size[1] // patch):,} patches, more than {MAX_PATCHES:,}"
            )
    if get("representation_size") and get("distilled"):
        problems.append("a distilled model has no pre-logits layer (representation_size must be 0)")
    return problems


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a Vision Transformer.

    image_size is the native (training) resolution: the position-embedding table holds one
    entry per patch of that grid, plus the prefix tokens. Other resolutions are accepted at
    call time and the table is resampled (``pos_interp``: "timm" or "dino").
    Every field is checked (`config_problems`, bounds in LIMITS); a bad value raises
    ConfigError naming every problem.
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
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        problems = config_problems(fields)
        if problems:
            raise ConfigError("invalid ViTConfig: " + capped(problems, sep="; "))
        # Normalised types: plain ints (not numpy's), a tuple size, a float eps.
        object.__setattr__(self, "image_size", _as_size(self.image_size))
        for field in _INT_FIELDS:
            object.__setattr__(self, field, int(getattr(self, field)))
        object.__setattr__(self, "layer_norm_eps", float(self.layer_norm_eps))

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

    def replace(self, **changes) -> ViTConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "config") -> ViTConfig:
        """Parse and check a config written by `to_json`; ConfigError names every problem."""
        d = parse_object(text, source, ConfigError, max_chars=MAX_CONFIG_CHARS)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown ViTConfig fields: {capped(unknown)}")
        return cls(**d)
