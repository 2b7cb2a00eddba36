"""Reading foreign checkpoint files into {key: float32 numpy array}, without running code.

Every tensor of a ViT is floating point: integer and bool tensors are refused, never cast.
Every failure is a ConversionError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..errors import ConversionError, capped, clip_text, os_reason
from ..io.safetensors_header import FLOAT_DTYPES, read_float32, read_header
from ..io.signals import reraise_signal


def check_readable(path) -> None:
    """A clear error for a missing, unreadable or directory path (not just "no such file")."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise ConversionError(f"no such checkpoint file: {path}") from None
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {os_reason(e)}") from None
    if os.path.isdir(path):
        raise ConversionError(f"{path} is a directory, not a checkpoint file")
    if not os.access(path, os.R_OK):
        raise ConversionError(f"cannot read {path}: permission denied")


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor as float32; the header (dtypes, byte ranges) is checked first. bfloat16
    and float16 files (some of timm's hub files) read too."""
    header = read_header(path, ConversionError)
    not_float = [f"{k} ({t.dtype})" for k, t in header.tensors.items() if t.dtype not in FLOAT_DTYPES]
    if not_float:
        raise ConversionError(
            f"{path}: a ViT's tensors are floating point; these are not: {capped(not_float)}"
        )
    return {k: read_float32(path, t, ConversionError, f"tensor {k}") for k, t in header.tensors.items()}


def read_torch_pickle(path) -> dict:
    """A .pth / .bin file, loaded with weights_only=True: tensors and containers, never code."""
    try:
        import torch
    except ImportError as e:
        raise ConversionError(
            f"reading {path} (a PyTorch pickle) needs PyTorch installed; "
            "or convert a .safetensors file instead"
        ) from e
    if is_torchscript(path):
        raise ConversionError(
            f"{path} is a TorchScript archive (as OpenAI's CLIP .pt files are): a program, which "
            "vitops does not run to read weights. Export its state dict where you trust it, "
            "torch.save(torch.jit.load(path, map_location='cpu').state_dict(), 'clip.pth'), "
            "and convert that (format openclip), or convert timm's or Hugging Face's copy"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors, truncation, refused globals
        reraise_signal(e)
        raise ConversionError(
            f"cannot read {path} as a PyTorch checkpoint "
            f"(loaded with weights_only=True): {clip_text(str(e), 300)}"
        ) from None
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def is_torchscript(path) -> bool:
    """A TorchScript archive: a zip whose members include the serialised code (code/...) and
    constants.pkl, which torch.save's zip files never hold."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _is_float(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind == "f"
    return bool(value.is_floating_point())


def flatten_tensors(obj, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """Keep the tensors of a state dict, as float32 numpy; non-tensor entries (an epoch
    number) are dropped; integer or bool tensors are an error naming them."""
    out, not_float = {}, []
    for k, v in obj.items():
        if hasattr(v, "detach") or isinstance(v, np.ndarray):
            if not _is_float(v):
                not_float.append(f"{k} ({v.dtype})")
            elif isinstance(v, np.ndarray):
                out[k] = v.astype(np.float32, copy=False)
            else:  # torch, any float dtype (bfloat16 included), without importing torch here
                out[k] = v.detach().float().cpu().numpy()
    if not_float:
        raise ConversionError(
            f"{source}: a ViT's tensors are floating point; these are not: {capped(not_float)}"
        )
    return out


def read_checkpoint(path) -> dict:
    """Load a checkpoint file as a dict (tensors, possibly nested), by its extension."""
    path = os.fspath(path)
    check_readable(path)
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return read_torch_pickle(path)
    raise ConversionError(
        f"unknown checkpoint extension for {path}; expected .safetensors, .pth, .pt, .bin or .npz"
    )
