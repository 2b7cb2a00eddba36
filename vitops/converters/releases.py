"""The DeiT and DINO release files: timm-named state dicts inside wrappers.

- DeiT (facebookresearch/deit): {"model": state_dict, ...}.
- DINO backbones (dino_*_pretrain.pth): a plain timm-named dict without a head.
- DINO training checkpoints: {"teacher": ..., "student": ...}, keys prefixed with "module."
  and/or "backbone."; the DINO projection head ("head.mlp...", "head.last_layer...") is not
  part of the ViT and is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

from .checkpoint_files import ConversionError

WHICH = ("teacher", "student")


def is_wrapped(obj: Mapping) -> bool:
    return isinstance(obj, Mapping) and any(k in obj for k in ("model", *WHICH))


def unwrap(obj: Mapping, which: str = "teacher") -> tuple[dict, str]:
    """Return (timm-named state dict, format name: "deit", "dino" or "timm")."""
    fmt = "timm"
    if "teacher" in obj or "student" in obj:
        if which not in WHICH:
            raise ConversionError(f"--which must be one of {WHICH}, got {which!r}")
        if which not in obj:
            raise ConversionError(
                f"this DINO checkpoint has no {which!r} weights (it has "
                f"{sorted(k for k in obj if k in WHICH)})"
            )
        obj, fmt = obj[which], "dino"
    elif "model" in obj and isinstance(obj["model"], Mapping):
        obj, fmt = obj["model"], "deit"
    sd = {}
    backbone = any(k.removeprefix("module.").startswith("backbone.") for k in obj)
    for key, value in obj.items():
        key = key.removeprefix("module.")
        if backbone:
            if not key.startswith("backbone."):
                continue  # DINO's projection head: not part of the ViT
            key = key.removeprefix("backbone.")
        sd[key] = value
    if backbone and fmt == "timm":
        fmt = "dino"
    return sd, fmt
