"""Position-embedding resampling, identical on every backend.

The reference implementations resample with PyTorch's bicubic interpolation, whose kernel
(a = -0.75 without antialias, PIL's a = -0.5 with it) differs from the a = -0.5 that JAX,
TensorFlow and `keras.ops.image.resize` use. Bicubic resampling of a grid is separable and
linear, so here it is two small matrices built once in float64 numpy, reproducing PyTorch's
index arithmetic, and applied with `keras.ops`: every backend then computes the same numbers.

Three modes, one per way the reference implementations resample:
- "timm": `F.interpolate(size=new, mode="bicubic", antialias=True, align_corners=False)`
  (timm `resample_abs_pos_embed`, its default for checkpoints and dynamic image sizes; also
  Hugging Face's Dinov2WithRegisters and the original DINOv2 register models).
- "dino": `F.interpolate(scale_factor=(new + 0.1) / old, mode="bicubic")`, no antialias
  (DINO's and the original DINOv2's `interpolate_pos_encoding`); PyTorch maps output to input
  coordinates with 1 / scale_factor, not old / new, which is why the +0.1 shifts the samples.
- "hf": `F.interpolate(size=new, mode="bicubic", align_corners=False)`, no antialias (Hugging
  Face's Dinov2, CLIP and SigLIP `interpolate_pos_encoding`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from keras import ops


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a, on |x| < 2."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def timm_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of PyTorch's antialiased bicubic resize (PIL's filter).

    Mirrors ATen's `_upsample_bicubic2d_aa`: support widens with the downscale factor, taps
    outside the input are dropped (not clamped) and the remaining weights renormalised.
    """
    scale = in_size / out_size
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        j = np.arange(lo, hi)
        w = _cubic((j - center + 0.5) * inv, a=-0.5)
        total = w.sum()
        m[i, lo:hi] = w / total if total != 0.0 else w
    return m


def _torch_bicubic(in_size: int, out_size: int, inverse_scale: float) -> np.ndarray:
    """(out_size, in_size) weights of PyTorch's bicubic resize without antialias (a = -0.75):
    output i samples input coordinate (i + 0.5) * inverse_scale - 0.5, taps clamped to the border."""
    src = (np.arange(out_size) + 0.5) * inverse_scale - 0.5
    base = np.floor(src)
    t = src - base
    m = np.zeros((out_size, in_size), np.float64)
    taps = (
        (-1, _cubic(t + 1.0, -0.75)),
        (0, _cubic(t, -0.75)),
        (1, _cubic(1.0 - t, -0.75)),
        (2, _cubic(2.0 - t, -0.75)),
    )
    rows = np.arange(out_size)
    for offset, w in taps:
        idx = np.clip(base.astype(np.int64) + offset, 0, in_size - 1)
        np.add.at(m, (rows, idx), w)
    return m


@functools.lru_cache(maxsize=64)
def dino_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of DINO's bicubic resize (no antialias, a = -0.75).

    DINO asks for scale_factor = (out + 0.1) / in so that floor(in * scale) == out; PyTorch
    then samples source coordinate (i + 0.5) / scale - 0.5 and clamps taps to the border.
    """
    scale_factor = (out_size + 0.1) / in_size
    if math.floor(in_size * scale_factor) != out_size:  # cannot happen for positive sizes
        raise ValueError(f"DINO interpolation cannot map {in_size} to {out_size}")
    return _torch_bicubic(in_size, out_size, 1.0 / scale_factor)


@functools.lru_cache(maxsize=64)
def hf_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of PyTorch's bicubic resize to a size, no antialias
    (Hugging Face's interpolate_pos_encoding): source coordinate (i + 0.5) * in / out - 0.5."""
    return _torch_bicubic(in_size, out_size, in_size / out_size)


def resample_matrices(old_grid, new_grid, mode: str):
    """Row and column resampling matrices, (new_h, old_h) and (new_w, old_w), float64."""
    build = {"timm": timm_matrix, "dino": dino_matrix, "hf": hf_matrix}.get(mode)
    if build is None:
        raise ValueError(f"unknown pos_interp mode {mode!r}; use 'timm', 'dino' or 'hf'")
    return build(old_grid[0], new_grid[0]), build(old_grid[1], new_grid[1])


def resample_pos_embed(pos_embed, old_grid, new_grid, num_prefix_tokens: int, mode: str = "timm"):
    """Resample a (T, D) position table from old_grid to new_grid; prefix rows are kept.

    Returns the table unchanged when the grids match, as timm and DINO both do.
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed
    mh, mw = resample_matrices(old_grid, new_grid, mode)
    dim = pos_embed.shape[-1]
    prefix = pos_embed[:num_prefix_tokens]  # (P, D)
    grid = ops.reshape(pos_embed[num_prefix_tokens:], (old_grid[0], old_grid[1] * dim))
    dtype = pos_embed.dtype
    # Rows first, then columns: (new_h, old_h) @ (old_h, old_w * D) -> (new_h, old_w, D).
    grid = ops.matmul(ops.convert_to_tensor(mh, dtype), grid)
    grid = ops.reshape(grid, (new_grid[0], old_grid[1], dim))
    grid = ops.einsum("wj,hjd->hwd", ops.convert_to_tensor(mw, dtype), grid)  # (new_h, new_w, D)
    grid = ops.reshape(grid, (new_grid[0] * new_grid[1], dim))
    return ops.concatenate([prefix, grid], axis=0)  # (P + new_h * new_w, D)
