"""Input checks shared by the analysis kernels: one clear error per kind of bad input."""

from __future__ import annotations

import math

from keras import ops

from ..errors import AnalysisError
from ..io.signals import reraise_signal


def as_tensor(x, name: str):
    try:
        return ops.convert_to_tensor(x)
    except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
        reraise_signal(e)
        raise AnalysisError(f"{name} must be an array, got {type(x).__name__}: {e}") from None


def check_rank(x, rank: int, name: str, layout: str):
    if len(x.shape) != rank:
        raise AnalysisError(f"{name} must have rank {rank} {layout}, got shape {tuple(x.shape)}")


def as_grid(grid) -> tuple[int, int]:
    if isinstance(grid, int):
        grid = (grid, grid)
    grid = tuple(int(g) for g in grid)
    if len(grid) != 2 or min(grid) <= 0:
        raise AnalysisError(f"grid must be a positive int or (rows, cols), got {grid}")
    return grid


def patch_grid(num_tokens: int, num_prefix_tokens: int, grid=None) -> tuple[int, int]:
    """The (rows, cols) patch grid of a sequence of num_tokens = prefix + rows * cols."""
    if num_prefix_tokens < 0:
        raise AnalysisError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
    patches = num_tokens - num_prefix_tokens
    if grid is not None:
        grid = as_grid(grid)
        if grid[0] * grid[1] != patches:
            raise AnalysisError(
                f"{num_tokens} tokens are not {num_prefix_tokens} prefix token(s) plus a "
                f"{grid[0]}x{grid[1]} grid ({grid[0] * grid[1]} patches)"
            )
        return grid
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise AnalysisError(
            f"{num_tokens} tokens are not {num_prefix_tokens} prefix token(s) plus a "
            f"square grid of patches; pass grid=(rows, cols) for non-square images"
        )
    return side, side


def attention_list(attentions, name: str = "attentions"):
    """A list of per-block (B, H, T, T) attention tensors (a stacked (L, B, H, T, T) works too)."""
    if hasattr(attentions, "shape") and len(attentions.shape) == 5:
        attentions = [attentions[i] for i in range(attentions.shape[0])]
    attentions = [as_tensor(a, name) for a in attentions]
    if not attentions:
        raise AnalysisError(f"{name} is empty: pass one (B, H, T, T) array per block")
    for a in attentions:
        check_rank(a, 4, name, "(B, heads, tokens, tokens) per block")
        if a.shape[-1] != a.shape[-2]:
            raise AnalysisError(f"{name}: attention must be square over tokens, got shape {tuple(a.shape)}")
    shapes = {tuple(a.shape) for a in attentions}
    if len(shapes) != 1:
        raise AnalysisError(f"{name}: blocks have different shapes {sorted(shapes)}")
    return attentions
