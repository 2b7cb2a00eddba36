"""Convert foreign checkpoints into one vitops .safetensors file.

    convert(src, dst, arch=None, format=None, which="teacher") -> ViTConfig

Formats (detected, or named with `format`):
  timm   timm state dicts, .safetensors (timm's hub files) or .pth
  deit   DeiT release .pth files ({"model": state_dict})
  dino   DINO release .pth files: backbones, or training checkpoints with teacher/student
  hf     Hugging Face ViT / DeiT / DINO: a save_pretrained directory, or its weight file
         (.safetensors or .bin) with config.json beside it
  npz    Google .npz (original, augreg, big_vision; ImageNet-21k pre-logits included)
"""

from __future__ import annotations

import os

import numpy as np

from .. import weights
from ..config import ViTConfig
from ._io import ConversionError, flatten_tensors, read_checkpoint
from .hf import find_files, hf_config, hf_to_timm, is_hf_state_dict
from .npz import is_npz_dict, npz_to_vitops
from .releases import is_wrapped, unwrap
from .timm import checked_arch, is_timm_state_dict, timm_to_vitops

FORMATS = ("timm", "deit", "dino", "hf", "npz")


def detect_format(sd) -> str:
    if is_wrapped(sd):
        return unwrap(sd)[1]
    if is_npz_dict(sd):
        return "npz"
    if is_hf_state_dict(sd):
        return "hf"
    if is_timm_state_dict(sd):
        return "timm"
    sample = ", ".join(list(sd)[:6])
    raise ConversionError(f"cannot tell the checkpoint format from its keys ({sample}, ...); "
                          f"known formats: {', '.join(FORMATS)}")


def _read_npz(path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - zip errors, truncation, pickled objects
        raise ConversionError(f"cannot read {path} as a .npz checkpoint: {e}") from None


def _apply_arch(config: ViTConfig, arch: str | None) -> ViTConfig:
    """Take family and name from a named architecture, after checking that the checkpoint's
    own config (Hugging Face config.json, or the .npz shapes) fits it."""
    if not arch:
        return config
    fields = ("dim", "depth", "num_heads", "patch_size", "mlp_dim", "image_size", "distilled")
    base = checked_arch(arch, {f: getattr(config, f) for f in fields})
    return config.replace(family=base.family, name=base.name)


def load_checkpoint(src, arch=None, format=None, which="teacher"):
    """Read any supported checkpoint: returns (params, config, format, weights file)."""
    src = os.fspath(src)
    if format is not None and format not in FORMATS:
        raise ConversionError(f"unknown format {format!r}; known formats: {', '.join(FORMATS)}")
    if os.path.isdir(src) or format == "hf":
        wfile, cfile, pfile = find_files(src)
        sd = hf_to_timm(flatten_tensors(read_checkpoint(wfile)))
        config = _apply_arch(hf_config(cfile, pfile, sd), arch)
        params, config = timm_to_vitops(sd, config=config)
        return params, config, "hf", wfile
    if src.endswith(".npz") or format == "npz":
        if not os.path.isfile(src):
            raise ConversionError(f"no such checkpoint file: {src}")
        params, config = npz_to_vitops(_read_npz(src), name=os.path.basename(src).removesuffix(".npz"))
        return params, _apply_arch(config, arch), "npz", src
    raw = read_checkpoint(src)
    fmt = format or detect_format(raw)
    if fmt == "hf":
        return load_checkpoint(src, arch, "hf", which)
    if fmt == "npz":
        params, config = npz_to_vitops(flatten_tensors(raw))
        return params, _apply_arch(config, arch), "npz", src
    sd, fmt = unwrap(raw, which) if is_wrapped(raw) else (raw, fmt)
    prefer = fmt if fmt in ("deit", "dino") else None
    params, config = timm_to_vitops(flatten_tensors(sd), arch, prefer=None if arch else prefer)
    return params, config, fmt, src


def convert(src, dst, arch: str | None = None, format: str | None = None,
            which: str = "teacher") -> ViTConfig:
    """Convert checkpoint `src` into vitops file `dst`; returns the model's config.

    Everything is checked before anything is written, and the write is atomic: on any error
    `dst` is left as it was (absent, or the previous file).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ConversionError("source and destination are the same file")
    params, config, fmt, wfile = load_checkpoint(src, arch, format, which)
    provenance = {"source_format": fmt, "source_file": os.path.basename(os.path.normpath(src)),
                  "source_sha256": weights.sha256_file(wfile)}
    weights.save(dst, params, config, provenance)
    return config


__all__ = ["ConversionError", "convert", "detect_format", "load_checkpoint", "FORMATS"]
