"""Reading foreign checkpoint files into {key: float32 numpy array}, without running code."""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConversionError


def _to_numpy(value):
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False)
    # torch tensors (any dtype, bfloat16 included) without importing torch at module level
    return value.detach().float().cpu().numpy()


def read_safetensors(path) -> dict[str, np.ndarray]:
    """Every tensor as float32. bfloat16 files (some of timm's hub files) read too: Keras
    depends on ml_dtypes, which gives numpy its bfloat16 type."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="numpy") as f:
            return {k: f.get_tensor(k).astype(np.float32, copy=False) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ConversionError(f"{path} is not a readable safetensors file "
                              f"(truncated or corrupt?): {e}") from None


def read_torch_pickle(path) -> dict:
    """A .pth / .bin file, loaded with weights_only=True: tensors and containers, never code."""
    try:
        import torch
    except ImportError as e:
        raise ConversionError(f"reading {path} (a PyTorch pickle) needs PyTorch installed; "
                              "or convert a .safetensors file instead") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncation, refused globals
        raise ConversionError(f"cannot read {path} as a PyTorch checkpoint "
                              f"(loaded with weights_only=True): {e}") from None
    return obj


def flatten_tensors(obj) -> dict[str, np.ndarray]:
    """Keep the tensors of a state dict, as float32 numpy; non-tensor entries are dropped."""
    out = {}
    for k, v in obj.items():
        if hasattr(v, "detach") or isinstance(v, np.ndarray):
            out[k] = _to_numpy(v)
    return out


def read_checkpoint(path) -> dict:
    """Load a checkpoint file as a dict (tensors, possibly nested), by its extension."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConversionError(f"no such checkpoint file: {path}")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return read_torch_pickle(path)
    raise ConversionError(f"unknown checkpoint extension for {path}; expected .safetensors, "
                          ".pth, .pt or .bin")
