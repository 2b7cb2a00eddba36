"""ViTConfig: the architecture of one model.

A config is everything the forward pass needs besides the arrays. It is frozen and
JSON-serialisable, because it travels inside every vitops weight file. Every config, however
it arrives (a weight file's metadata, a Hugging Face config.json, an --arch name, a Python
caller), passes the one validation in `config_problems`.

Every family is a config delta of one forward pass (`vitops.core.vit`):

    Google ViT, DINO      the defaults (class token, learned position embeddings, token pooling)
    DeiT                  distilled=True: a distillation token and a second head
    DeiT III              layer_scale, pos_embed="patches"
    DINOv2                layer_scale, family "dinov2"; with registers: reg_tokens=4,
                          pos_embed="patches"; ViT-g: mlp="swiglu", act="silu"
    CLIP (image tower)    pre_norm, patch_bias=False, layer_norm_eps=1e-5, act="quick_gelu"
                          (OpenAI's), proj_dim: the image embedding
    SigLIP (image tower)  class_token=False, pos_embed="patches", pool="map"
    DINOv3                reg_tokens=4, pos_embed="none", rope_base=100 (2-D RoPE), layer_scale,
                          layer_norm_eps=1e-5; S+ and H+: mlp="swiglu"
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

# Model families decide preprocessing (see preprocess.py) and nothing else: every family is a
# config delta of the same ViT, not separate code.
FAMILIES = ("vit", "deit", "dino", "deit3", "dinov2", "clip", "siglip", "dinov3")
# How a learned position table is resampled for another grid (see posemb.py).
POS_INTERP_MODES = ("timm", "dino", "hf")
# Which tokens a learned position table covers: the class and distillation tokens and the
# patches ("all": Google ViT, DeiT, DINO, DINOv2, CLIP), the patches only ("patches": DeiT III,
# DINOv2 with registers, SigLIP), or no table at all ("none": DINOv3, whose positions are
# rotary). Register tokens never get a position embedding.
POS_EMBEDS = ("all", "patches", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "silu")
MLPS = ("mlp", "swiglu")
# How the features are read off the last tokens: the class token ("token"), the mean of the
# patch tokens ("avg"), or an attention-pool head ("map": SigLIP's multihead attention pooling).
POOLS = ("token", "avg", "map")

# Bounds on every size (inclusive). They admit every plain ViT published up to ViT-G/14 and
# ViT-e (Zhai et al. 2022, "Scaling Vision Transformers", Table 2: width <= 1792, depth <= 56,
# MLP <= 15360, 16 heads), DINOv2 ViT-g/14 (width 1536, depth 40, 24 heads) at up to 2048 px.
# ViT-22B (Dehghani et al. 2023: width 6144, 48 heads, MLP 24576) and DINOv3 7B (width 4096) are
# beyond them, on purpose: without bounds a 500 KB file claiming a million blocks makes the
# loader build a million-block parameter table before any tensor is compared.
LIMITS = {
    "patch_size": (1, 64),
    "image_side": (1, 2048),  # each of image_size's height and width, in pixels
    "dim": (1, 2048),
    "depth": (1, 64),
    "num_heads": (1, 64),
    "mlp_dim": (1, 16384),
    "num_classes": (0, 100_000),  # 0: headless; ImageNet-21k has 21,843
    "representation_size": (0, 4096),  # 0: none; Google's 21k pre-logits are the width
    "reg_tokens": (0, 64),  # DINOv2 and DINOv3 release 4 (Darcet et al. 2024 tried up to 16)
    "proj_dim": (0, 4096),  # 0: none; CLIP's image embedding (512 for B/16, 768 for L/14)
}
# Patches per image at the native size: (1024 / 8)^2. Attention is quadratic in it.
MAX_PATCHES = 128 * 128
# LayerNorm eps: timm/DeiT/DINO/Google use 1e-6, CLIP and DINOv3 1e-5, Hugging Face ViT configs
# 1e-12. Below 1e-12 a float32 eps is no protection against a zero variance; above 0.1 it
# rescales activations.
LAYER_NORM_EPS_RANGE = (1e-12, 0.1)
ROPE_BASE_RANGE = (1.0, 1e6)  # DINOv3: 100; language models use 1e4 to 1e6
MAX_NAME_CHARS = 200
# A config's JSON is about 500 characters (a name included); anything far longer is not one.
MAX_CONFIG_CHARS = 4096

_INT_FIELDS = (
    "patch_size",
    "dim",
    "depth",
    "num_heads",
    "mlp_dim",
    "num_classes",
    "representation_size",
    "reg_tokens",
    "proj_dim",
)
_BOOL_FIELDS = ("distilled", "class_token", "pre_norm", "layer_scale", "qkv_bias", "patch_bias", "fc_norm")
_CHOICES = {
    "family": FAMILIES,
    "pos_interp": POS_INTERP_MODES,
    "pos_embed": POS_EMBEDS,
    "act": ACTIVATIONS,
    "mlp": MLPS,
    "pool": POOLS,
}


def _is_int(value) -> bool:
    # Exact integers only: 64.0 and True are not sizes (numpy integers are).
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and type(value).__name__ != "bool_"
    )


def _as_size(value):
    """image_size as given -> (Y, X) of ints, or None when it is not an int or an int pair."""
    if _is_int(value):
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _number_problem(value, label: str, low: float, high: float) -> str | None:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or type(value).__name__ == "bool_":
        return f"{label} must be a number, got {clip(value)} ({type(value).__name__})"
    if not (finite(value) and low <= float(value) <= high):
        return f"{label} must be in [{low:g}, {high:g}], got {clip(value)}"
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
    numbers_ = (("layer_norm_eps", LAYER_NORM_EPS_RANGE), ("rope_base", (0.0, ROPE_BASE_RANGE[1])))
    problems += [
        p for f, bounds in numbers_ if f in fields and (p := _number_problem(fields[f], name(f), *bounds))
    ]
    problems += [
        f"{name(f)} must be true or false, got {clip(fields[f])}"
        for f in _BOOL_FIELDS
        if f in fields and not isinstance(fields[f], bool)
    ]
    problems += [
        f"{name(f)} must be one of {', '.join(allowed)}; got {clip(fields[f])}"
        for f, allowed in _CHOICES.items()
        if f in fields and (not isinstance(fields[f], str) or fields[f] not in allowed)
    ]
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
    if get("distilled") and get("class_token") is False:
        problems.append("a distilled model has a class token (class_token must be true)")
    if get("class_token") is False and get("pool", "token") != "map":
        # what stands in for the class token's row in the analyses is the pooling head's query
        problems.append("a model without a class token pools by its attention-pool head (pool 'map')")
    if get("fc_norm") and get("pool") == "token":
        problems.append("fc_norm normalises the pooled patch tokens: it goes with pool 'avg' or 'map'")
    if get("mlp") == "swiglu" and get("act") != "silu":
        problems.append("a SwiGLU MLP gates with SiLU (act must be 'silu')")
    rope = get("rope_base")
    if rope:
        if rope < ROPE_BASE_RANGE[0]:
            problems.append(
                f"{name('rope_base')} must be 0 (no rotary embedding) or at least {ROPE_BASE_RANGE[0]:g}"
            )
        if dim is not None and heads is not None and (dim // heads) % 4:
            problems.append(f"2-D rotary embeddings need a head width divisible by 4, got {dim // heads}")
        if get("pos_embed", "all") != "none":
            problems.append("a model with rotary position embeddings has no learned table (pos_embed 'none')")
    return problems


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a Vision Transformer (the module docstring lists each family's delta).

    image_size is the native (training) resolution: a learned position table holds one entry
    per patch of that grid (and the class and distillation tokens with pos_embed "all"). Other
    resolutions are accepted at call time and the table is resampled (``pos_interp``: "timm",
    "dino" or "hf"); rotary embeddings (rope_base > 0) are computed for any grid.
    Every field is checked (`config_problems`, bounds in LIMITS); a bad value raises
    ConfigError naming every problem.
    """

    image_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072  # the MLP's hidden width (SwiGLU: of each of its two branches)
    num_classes: int = 1000  # 0: headless, the model returns features
    distilled: bool = False  # DeiT: a distillation token and a second head
    representation_size: int = 0  # Google's ImageNet-21k releases: dense + tanh before the head
    layer_norm_eps: float = 1e-6  # timm / DeiT / DINO / Google ViT; CLIP, DINOv3 1e-5; HF ViT 1e-12
    family: str = "vit"  # decides preprocessing (preprocess.NORMALIZATION)
    pos_interp: str = "timm"  # how a learned position table is resampled for other image sizes
    name: str = ""
    class_token: bool = True
    reg_tokens: int = 0  # register tokens (Darcet et al. 2024), after the class/distillation tokens
    pos_embed: str = "all"  # which tokens the learned position table covers (POS_EMBEDS)
    rope_base: float = 0.0  # > 0: 2-D rotary position embeddings of the patches (DINOv3: 100)
    pre_norm: bool = False  # a LayerNorm on the embeddings before the first block (CLIP)
    patch_bias: bool = True  # the patch embedding's bias (CLIP has none)
    qkv_bias: bool = True
    layer_scale: bool = False  # x + gamma * f(x) on each branch (DeiT III, DINOv2, DINOv3)
    act: str = "gelu"  # the MLP's activation: exact erf GELU, tanh GELU, QuickGELU, SiLU
    mlp: str = "mlp"  # "mlp" (fc1, act, fc2) or "swiglu" (fc2(silu(gate) * value))
    pool: str = "token"  # how the features are read off the last tokens (POOLS)
    fc_norm: bool = False  # pool "avg"/"map": the final norm after pooling instead of on the tokens
    proj_dim: int = 0  # > 0: a bias-free projection of the features (CLIP's image embedding)

    def __post_init__(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        problems = config_problems(fields)
        if problems:
            raise ConfigError("invalid ViTConfig: " + capped(problems, sep="; "))
        # Normalised types: plain ints (not numpy's), a tuple size, float eps and base.
        object.__setattr__(self, "image_size", _as_size(self.image_size))
        for field in _INT_FIELDS:
            object.__setattr__(self, field, int(getattr(self, field)))
        object.__setattr__(self, "layer_norm_eps", float(self.layer_norm_eps))
        object.__setattr__(self, "rope_base", float(self.rope_base))

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        """P: the class token, the distillation token and the registers, in that order."""
        return int(self.class_token) + int(self.distilled) + self.reg_tokens

    @property
    def num_pos_prefix(self) -> int:
        """The prefix tokens the learned position table has rows for (registers never do)."""
        return int(self.class_token) + int(self.distilled) if self.pos_embed == "all" else 0

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
        """Parse and check a config written by `to_json`; ConfigError names every problem.
        Fields a file does not name take their defaults (files written before a field existed)."""
        d = parse_object(text, source, ConfigError, max_chars=MAX_CONFIG_CHARS)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown ViTConfig fields: {capped(unknown)}")
        return cls(**d)
