"""Convert foreign checkpoints into one vitops .safetensors file.

    convert(src, dst, arch=None) -> ViTConfig

Formats: timm state dicts (.safetensors as on timm's hub, or .pth), which is also the naming
of the DeiT and DINO releases.
"""

from __future__ import annotations

import os

from .. import weights
from ._io import ConversionError, flatten_tensors, read_checkpoint
from .timm import is_timm_state_dict, timm_to_vitops

FORMATS = ("timm",)


def detect_format(sd) -> str:
    if is_timm_state_dict(sd):
        return "timm"
    sample = ", ".join(list(sd)[:6])
    raise ConversionError(f"cannot tell the checkpoint format from its keys ({sample}, ...); "
                          f"known formats: {', '.join(FORMATS)}")


def convert(src, dst, arch: str | None = None, format: str | None = None):
    """Convert checkpoint `src` into vitops file `dst`; returns the model's config.

    Everything is checked before anything is written, and the write is atomic: on any error
    `dst` is left as it was (absent, or the previous file).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ConversionError("source and destination are the same file")
    sd = flatten_tensors(read_checkpoint(src))
    fmt = format or detect_format(sd)
    if fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    params, config = timm_to_vitops(sd, arch)
    provenance = {"source_format": fmt, "source_file": os.path.basename(src),
                  "source_sha256": weights.sha256_file(src)}
    weights.save(dst, params, config, provenance)
    return config


__all__ = ["ConversionError", "convert", "detect_format", "timm_to_vitops", "FORMATS"]
