"""Images in, model-ready NHWC float32 out: decode, to RGB, resize, centre-crop, normalise.

    rgb = read_image("cat.jpg")                 # once (vitops.io.image_file: header checked first)
    x = prepare(rgb, Preprocessing.for_model(model.config, model.metadata))   # (Y, X, 3)
    batch = preprocess(["cat.jpg", "dog.png"], preprocessing=p)               # (B, Y, X, 3)

The eval transform: resize the short side to size / crop_pct, centre-crop to size, scale to
[0, 1] by the pixel type (uint8 / 255, uint16 / 65535; float images are taken as already in
[0, 1]), subtract the mean and divide by the std. Shrinking always uses OpenCV's area filter
(antialiased); enlarging uses the named interpolation (OpenCV's bicubic or bilinear). When
enlarging, only the crop is computed: the same samples as resizing the whole image first, up
to OpenCV's 1/32-pixel coordinate rounding, in memory of the crop's size.

Preprocessing travels with the weights (metadata key "preprocessing", see `Preprocessing`);
without it the family defaults below apply.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .core.config import FAMILIES, LIMITS
from .errors import ConfigError, ImageError, clip
from .io.bounded_json import parse_object
from .io.image_file import PIXEL_TYPES, _cv2, read_image, to_rgb
from .io.schema import finite

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's normalisation (openai/CLIP clip/clip.py, _transform)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # [0, 1] -> [-1, 1]: Google ViT, SigLIP (big_vision's value_range(-1, 1))
NORMALIZATION = {
    "vit": (HALF, HALF),
    "deit": (IMAGENET_MEAN, IMAGENET_STD),
    "dino": (IMAGENET_MEAN, IMAGENET_STD),
    "deit3": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
    "siglip": (HALF, HALF),
    "dinov3": (IMAGENET_MEAN, IMAGENET_STD),
}
# 224 / 256: DeiT's and DINO's eval transform (resize 256, crop 224) and the keras-io example's.
DEFAULT_CROP_PCT = 0.875
# Per family, the crop of the published evaluations: timm's 0.9 for Google ViT (timm measured
# the top-1 the registry quotes with it), the authors' 0.875 for DeiT, DINO and DINOv2
# (Resize(256) + CenterCrop(224)), 1.0 for DeiT III (its --eval-crop-ratio 1.0), CLIP (resize
# the short side to 224, crop 224), SigLIP and DINOv3 (resize to the size, no crop); at 384 px
# and above every family is evaluated uncropped (timm's *_384 configs: crop_pct 1.0).
FAMILY_CROP_PCT = {
    "vit": 0.9,
    "deit": DEFAULT_CROP_PCT,
    "dino": DEFAULT_CROP_PCT,
    "deit3": 1.0,
    "dinov2": DEFAULT_CROP_PCT,
    "clip": 1.0,
    "siglip": 1.0,
    "dinov3": 1.0,
}
# Families whose published eval transform resizes to the size without keeping the aspect ratio:
# SigLIP (big_vision resize(224)) and DINOv3 (its README: Resize((256, 256))).
SQUASHED_FAMILIES = ("siglip", "dinov3")
FULL_CROP_FROM = 384
INTERPOLATIONS = ("bicubic", "bilinear")
CROP_PCT_RANGE = (0.25, 1.0)  # published evals use 0.75-1.0
STD_RANGE = (1e-3, 1.0)  # of [0, 1] data; a tiny std would blow finite pixels up
MAX_PREPROCESSING_CHARS = 4096


@dataclass(frozen=True)
class Preprocessing:
    """How a model's images are prepared: output size (height, width), crop_pct,
    interpolation ("bicubic" or "bilinear", used when enlarging), per-channel RGB mean and
    std of [0, 1] pixels, and keep_aspect: resize the short side (True) or both sides to
    size / crop_pct (False: SigLIP's and DINOv3's square resize). Checked on construction
    (ConfigError).

    In a weight file's metadata as JSON: {"size": [224, 224], "crop_pct": 0.9,
    "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
    "keep_aspect": true} (files without keep_aspect keep the aspect ratio).
    """

    size: tuple[int, int]
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    keep_aspect: bool = True

    def __post_init__(self):
        problems = preprocessing_problems(dataclasses.asdict(self))
        if problems:
            raise ConfigError("invalid preprocessing: " + "; ".join(problems))
        size = self.size
        object.__setattr__(
            self,
            "size",
            (int(size), int(size)) if isinstance(size, numbers.Integral) else (int(size[0]), int(size[1])),
        )
        object.__setattr__(self, "crop_pct", float(self.crop_pct))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def replace(self, **changes) -> Preprocessing:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        import json

        d = dataclasses.asdict(self)
        d["size"], d["mean"], d["std"] = list(self.size), list(self.mean), list(self.std)
        return json.dumps(d, sort_keys=True)

    @classmethod
    def for_family(cls, family: str, size=224) -> Preprocessing:
        """The defaults of a model family (FAMILY_CROP_PCT, NORMALIZATION), bicubic."""
        if family not in FAMILIES:
            raise ConfigError(f"unknown family {clip(family)}; one of {', '.join(FAMILIES)}")
        mean, std = NORMALIZATION[family]
        sides = (size, size) if isinstance(size, numbers.Integral) else tuple(size)
        crop = 1.0 if min(sides) >= FULL_CROP_FROM else FAMILY_CROP_PCT[family]
        return cls(
            size=size,
            crop_pct=crop,
            interpolation="bicubic",
            mean=mean,
            std=std,
            keep_aspect=family not in SQUASHED_FAMILIES,
        )

    @classmethod
    def from_mapping(
        cls, d: Mapping, base: Preprocessing | None = None, source: str = "preprocessing"
    ) -> Preprocessing:
        """From a mapping with any of the fields (a registry entry's "preprocessing", the
        metadata JSON); missing fields come from `base`. Unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(
                f"{source}: unknown preprocessing fields {clip(unknown)}; known: {', '.join(sorted(fields))}"
            )
        # fields with a default (keep_aspect) may be absent: records written before they existed
        values = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        values.update(dataclasses.asdict(base) if base is not None else {})
        values.update(d)
        missing = sorted(fields - set(values))
        if missing:
            raise ConfigError(f"{source}: preprocessing lacks {', '.join(missing)}")
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json(
        cls, text: str, base: Preprocessing | None = None, source: str = "preprocessing"
    ) -> Preprocessing:
        return cls.from_mapping(
            parse_object(text, source, ConfigError, MAX_PREPROCESSING_CHARS), base, source
        )

    @classmethod
    def for_model(
        cls, config, metadata: Mapping | None = None, family: str | None = None, **overrides
    ) -> Preprocessing:
        """A model's preprocessing: the family defaults at its native size, then what its weight
        file says (metadata "preprocessing"), then the overrides
        that are not None (size, crop_pct, interpolation, mean, std). `family` replaces the
        model's family and ignores the file's own record (the CLI's --family)."""
        base = cls.for_family(family or config.family, config.image_size)
        metadata = metadata or {}
        if family is None and "preprocessing" in metadata:
            base = cls.from_json(metadata["preprocessing"], base, "metadata preprocessing")
        changes = {k: v for k, v in overrides.items() if v is not None}
        return base.replace(**changes) if changes else base


def _numbers(value, count):
    return isinstance(value, (list, tuple)) and len(value) == count and all(finite(v) for v in value)


def preprocessing_problems(d: Mapping) -> list[str]:
    """Every problem of a preprocessing record, as readable lines."""
    problems = []
    size, (low, high) = d.get("size"), LIMITS["image_side"]
    sides = [size] if isinstance(size, numbers.Integral) else size
    if not (
        isinstance(sides, (list, tuple))
        and len(sides) in (1, 2)
        and (len(sides) == 2 or sides is not size)
        and all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and low <= s <= high for s in sides
        )
    ):
        problems.append(f"size must be an integer or [height, width] in [{low}, {high}], got {clip(size)}")
    crop = d.get("crop_pct")
    if not (finite(crop) and CROP_PCT_RANGE[0] <= crop <= CROP_PCT_RANGE[1]):
        problems.append(
            f"crop_pct must be a number in [{CROP_PCT_RANGE[0]}, {CROP_PCT_RANGE[1]}], got {clip(crop)}"
        )
    if d.get("interpolation") not in INTERPOLATIONS:
        problems.append(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {clip(d.get('interpolation'))}"
        )
    mean, std = d.get("mean"), d.get("std")
    if not (_numbers(mean, 3) and all(0 <= v <= 1 for v in mean)):
        problems.append(f"mean must be 3 numbers in [0, 1], got {clip(mean)}")
    if not (_numbers(std, 3) and all(STD_RANGE[0] <= v <= STD_RANGE[1] for v in std)):
        problems.append(f"std must be 3 numbers in [{STD_RANGE[0]}, {STD_RANGE[1]}], got {clip(std)}")
    if not isinstance(d.get("keep_aspect", True), bool):
        problems.append(f"keep_aspect must be true or false, got {clip(d.get('keep_aspect'))}")
    return problems


def crop_geometry(h: int, w: int, size, crop_pct: float, keep_aspect: bool = True):
    """Where the eval transform takes its crop: the image resized to (nh, nw) (short side
    size / crop_pct, at least the crop; without keep_aspect each side size / crop_pct), the
    crop's top-left corner (top, left) there, and the smaller of the two scale factors.

    The integer arithmetic of timm's eval transform, so that the pixels are the ones published
    accuracies were measured on: the short side floor(size / crop_pct) (timm's
    transforms_imagenet_eval; 224 / 0.9 gives 248), the long side truncated as torchvision's
    Resize does (int(short * long / short_side)), and the crop's corner rounded as its
    CenterCrop does (int(round((nh - th) / 2)))."""
    th, tw = size
    if keep_aspect:
        short = math.floor(min(th, tw) / crop_pct)
        if h <= w:
            nh, nw = short, int(short * w / h)
        else:
            nh, nw = int(short * h / w), short
    else:
        nh, nw = math.floor(th / crop_pct), math.floor(tw / crop_pct)
    nh, nw = max(th, nh), max(tw, nw)
    scale = min(nh / h, nw / w)
    return nh, nw, int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0)), scale


def _warp_crop(image, nh, nw, top, left, th, tw, flag):
    """The (th, tw) crop at (top, left) of the image resized to (nh, nw), computed directly:
    the source window under the crop (plus the kernel's reach) is warped with the resize's
    own coordinate map x_src = (x + 0.5) * w / nw - 0.5, edges replicated as resize does."""
    cv2 = _cv2()
    h, w = image.shape[:2]
    sy, sx = h / nh, w / nw
    y_first, x_first = (top + 0.5) * sy - 0.5, (left + 0.5) * sx - 0.5
    y_last, x_last = (top + th - 0.5) * sy - 0.5, (left + tw - 0.5) * sx - 0.5
    # Bicubic reads 2 source pixels on each side of a sample; 2 and 3 cover floor() too.
    y0, y1 = max(0, math.floor(y_first) - 2), min(h, math.floor(y_last) + 3)
    x0, x1 = max(0, math.floor(x_first) - 2), min(w, math.floor(x_last) + 3)
    window = np.ascontiguousarray(image[y0:y1, x0:x1])  # (<= th + 5, <= tw + 5, 3) when enlarging
    m = np.array([[sx, 0.0, x_first - x0], [0.0, sy, y_first - y0]])
    return cv2.warpAffine(
        window, m, (tw, th), flags=flag | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def resize_and_crop(
    image: np.ndarray,
    size,
    crop_pct: float = DEFAULT_CROP_PCT,
    interpolation: str = "bicubic",
    keep_aspect: bool = True,
) -> np.ndarray:
    """Resize the short side (without keep_aspect: each side) to size / crop_pct, then
    centre-crop to size ((h, w) or int).
    The pixel type is kept. Shrinking: area filter on the whole image, then the crop (memory
    of the source's size). Enlarging: only the crop is computed (memory of the crop's size,
    whatever the aspect ratio: a 1 x 20000 image costs 224 x 224 pixels, not 5 million)."""
    cv2 = _cv2()
    th, tw = (size, size) if isinstance(size, numbers.Integral) else size
    h, w = image.shape[:2]
    nh, nw, top, left, scale = crop_geometry(h, w, (th, tw), crop_pct, keep_aspect)
    flags = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}
    if interpolation not in flags:
        raise ConfigError(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {clip(interpolation)}"
        )
    if scale >= 1:
        return _warp_crop(image, nh, nw, top, left, th, tw, flags[interpolation])
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return resized[top : top + th, left : left + tw]


def to_unit(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Pixels as float32 in [0, 1], by the pixel type: uint8 / 255, uint16 / 65535; float
    images are taken as already in [0, 1] (values outside by more than rounding are an error,
    e.g. a float array in [0, 255]: divide it by 255 first)."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535)
    if image.dtype.kind == "f":
        x = image.astype(np.float32, copy=False)
        if x.size:
            lo, hi = float(x.min()), float(x.max())
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ImageError(f"{name}: has NaN or infinite pixel values")
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ImageError(
                    f"{name}: float pixels must lie in [0, 1] (found {lo:.4g} to {hi:.4g}); "
                    "a [0, 255] float image must be divided by 255"
                )
        return np.clip(x, 0, 1)
    raise ImageError(f"{name}: pixel type {image.dtype} is not supported")


def _as_preprocessing(spec) -> Preprocessing:
    """A Preprocessing, or a family name (its defaults at 224 px, as before)."""
    if isinstance(spec, Preprocessing):
        return spec
    if isinstance(spec, str):
        return Preprocessing.for_family(spec)
    raise ConfigError(f"expected a Preprocessing or a family name, got {clip(spec)}")


def normalize(image: np.ndarray, family="vit") -> np.ndarray:
    """RGB pixels -> float32 normalised with a family's (or a Preprocessing's) mean and std;
    the value range comes from the pixel type (`to_unit`)."""
    p = _as_preprocessing(family)
    x = to_unit(image)
    return (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)


def denormalize(x: np.ndarray, family="vit") -> np.ndarray:
    """Inverse of `normalize` (family name or Preprocessing), clipped to [0, 1] float RGB,
    for display."""
    p = _as_preprocessing(family)
    return np.clip(
        np.asarray(x, np.float32) * np.asarray(p.std, np.float32) + np.asarray(p.mean, np.float32), 0, 1
    )


def prepare(rgb: np.ndarray, preprocessing: Preprocessing, name: str = "image") -> np.ndarray:
    """One decoded RGB image (from `read_image`, or any (Y, X[, C]) array) -> (Y', X', 3)
    float32, model-ready. Decode once, prepare for several models."""
    p = _as_preprocessing(preprocessing)
    image = to_rgb(rgb, name=name)
    if image.dtype.kind == "f":
        to_unit(image, name)  # range and finiteness checked before resampling
    cv2 = _cv2()
    try:
        cropped = resize_and_crop(image, p.size, p.crop_pct, p.interpolation, p.keep_aspect)
    except cv2.error as e:
        raise ImageError(f"{name}: cannot resize: {str(e).strip()[:200]}") from None
    x = to_unit(cropped, name)
    return (x - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)


def preprocess(
    images,
    size=None,
    family: str | None = None,
    crop_pct: float | None = None,
    preprocessing: Preprocessing | None = None,
    max_pixels: int | None = None,
) -> np.ndarray:
    """File paths and/or RGB arrays -> (B, h, w, 3) float32, ready for the model.

    Either a `preprocessing` (e.g. ``Preprocessing.for_model(model.config, model.metadata)``),
    or the family's defaults (``family=model.config.family``, default "vit"); size (int or
    (h, w), default 224) and crop_pct, when given, replace the chosen values.
    Files: see `read_image` (max_pixels is its pixel budget).
    """
    if preprocessing is None:
        preprocessing = Preprocessing.for_family(family or "vit", size if size is not None else 224)
    elif family is not None:
        raise ConfigError("give preprocessing= or family=, not both")
    changes = {k: v for k, v in (("size", size), ("crop_pct", crop_pct)) if v is not None}
    p = preprocessing.replace(**changes) if changes else preprocessing
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        images = [images]
    out = []
    for item in images:
        if isinstance(item, (str, os.PathLike)):
            out.append(prepare(read_image(item, max_pixels), p, name=os.fspath(item)))
        else:
            out.append(prepare(item, p))
    if not out:
        raise ImageError("no images to preprocess")
    return np.stack(out)


__all__ = [
    "Preprocessing",
    "preprocess",
    "prepare",
    "read_image",
    "to_rgb",
    "resize_and_crop",
    "normalize",
    "denormalize",
    "to_unit",
    "crop_geometry",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATION",
    "DEFAULT_CROP_PCT",
    "INTERPOLATIONS",
    "PIXEL_TYPES",
]
