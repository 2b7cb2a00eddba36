"""Preprocessing for a converted model (metadata key "preprocessing"; see vitops.preprocess).

Sources, first found wins: the caller's (the registry entry's), a Hugging Face
preprocessor_config.json, and timm's pretrained config when the architecture is named with a
pretrained tag and timm is installed (optional: vitops never needs timm to run). Without any,
nothing is recorded and loading falls back to the family defaults.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

from ..errors import ConfigError, ConversionError, clip
from ..preprocess import INTERPOLATIONS, Preprocessing

# PIL resampling codes, as Hugging Face image processors store them ("resample").
HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _side(value, source, key):
    """An HF size field -> (h, w) of the resize target, or (None, short side)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value), int(value)), None
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            h, w = value["height"], value["width"]
            if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (h, w)):
                return (int(h), int(w)), None
        elif "shortest_edge" in value:
            s = value["shortest_edge"]
            if isinstance(s, numbers.Integral) and not isinstance(s, bool):
                return None, int(s)
    raise ConversionError(
        f"{source}: {key} {clip(value)} is not a size (an integer, "
        '{"height", "width"} or {"shortest_edge"})'
    )


def hf_preprocessing(p: Mapping, base: Preprocessing, source: str) -> Preprocessing:
    """A Hugging Face image processor config -> Preprocessing, fields it lacks from `base`.

    ViTImageProcessor, SigLIP's and DINOv3's resize to `size` {"height", "width"} without
    cropping and without keeping the aspect ratio (crop_pct 1.0, keep_aspect False); DeiT's,
    CLIP's and Dinov2's resize the short side and centre-crop `crop_size` (crop_pct =
    crop_size / short side).
    """
    fields = {}
    for key, target in (("image_mean", "mean"), ("image_std", "std")):
        if key in p:
            value = p[key]
            fields[target] = (
                [value] * 3 if isinstance(value, numbers.Real) and not isinstance(value, bool) else value
            )
    if "resample" in p:
        code = p["resample"]
        name = HF_RESAMPLE.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
        if name not in INTERPOLATIONS:
            raise ConversionError(
                f"{source}: resample {clip(code)} ({name or 'unknown'}) is not one "
                f"vitops resizes with ({', '.join(INTERPOLATIONS)})"
            )
        fields["interpolation"] = name
    crop = p.get("do_center_crop", False)
    if not isinstance(crop, bool):
        raise ConversionError(f"{source}: do_center_crop must be true or false, got {clip(crop)}")
    resize, short = _side(p["size"], source, "size") if "size" in p else (None, None)
    if crop and "crop_size" in p:
        out, _ = _side(p["crop_size"], source, "crop_size")
        if out is None:
            raise ConversionError(f"{source}: crop_size must give a height and a width")
        fields["size"] = list(out)
        resized_short = short or (min(resize) if resize else None)
        if resized_short:
            fields["crop_pct"] = min(out) / resized_short
    elif resize is not None:  # resized to (height, width) whatever the aspect ratio, uncropped
        fields["size"], fields["crop_pct"], fields["keep_aspect"] = list(resize), 1.0, False
    if "crop_pct" in p and p["crop_pct"] is not None:
        fields["crop_pct"] = p["crop_pct"]
    try:
        return Preprocessing.from_mapping(fields, base, source)
    except ConfigError as e:
        raise ConversionError(str(e)) from None


def timm_preprocessing(arch: str | None) -> Preprocessing | None:
    """timm's pretrained config for `arch` ("name.tag"), when timm is installed and knows it."""
    if not arch or "." not in arch:
        return None
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        return None
    cfg = get_pretrained_cfg(arch)
    if cfg is None or getattr(cfg, "interpolation", None) not in INTERPOLATIONS:
        return None
    _, h, w = cfg.input_size
    try:
        return Preprocessing(
            size=(h, w),
            crop_pct=cfg.crop_pct,
            interpolation=cfg.interpolation,
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
        )
    except ConfigError:
        return None  # a timm config vitops cannot express (e.g. a crop_pct above 1)


def given_preprocessing(value, base: Preprocessing) -> Preprocessing:
    """The caller's preprocessing (a Preprocessing, or a mapping such as a registry entry's),
    fields it lacks from `base`."""
    if isinstance(value, Preprocessing):
        return value
    if not isinstance(value, Mapping):
        raise ConversionError(f"preprocessing must be a Preprocessing or a mapping, got {clip(value)}")
    try:
        return Preprocessing.from_mapping(value, base)
    except ConfigError as e:
        raise ConversionError(str(e)) from None
