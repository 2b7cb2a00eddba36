"""Probes of what the embedding layers learned, and of the CLS token across blocks."""

from __future__ import annotations

import numpy as np
from keras import ops

from ..errors import AnalysisError
from ._checks import as_tensor

# The position-similarity figure (ViT paper, Fig. 7 centre) shows one tile per patch; above this
# many patches a side, the tiles of an evenly spaced lattice of patches (a 64 x 64 grid's full
# matrix is 16.8 M numbers: 356 MB in metrics.json).
MAX_REFERENCE_SIDE = 16


def reference_patches(grid, most: int = MAX_REFERENCE_SIDE) -> np.ndarray:
    """Row-major indices of the patches whose position similarity a report keeps: every patch
    of a grid (I, J) up to `most` a side, else an evenly spaced lattice of most x most
    (fewer along a shorter side), first and last rows and columns included."""
    rows = np.unique(np.linspace(0, grid[0] - 1, min(grid[0], most)).round().astype(int))
    cols = np.unique(np.linspace(0, grid[1] - 1, min(grid[1], most)).round().astype(int))
    return (rows[:, None] * grid[1] + cols[None, :]).reshape(-1)


def position_similarity(pos_embed, num_prefix_tokens: int = 1, patches=None):
    """Cosine similarity between the patches' position embeddings: (T, D) or (1, T, D) -> (N, N),
    or (K, N) for the K patches (row-major indices) given.

    Row i reshaped to the patch grid shows which positions patch i's embedding resembles
    (ViT paper, Fig. 7 centre).
    """
    p = as_tensor(pos_embed, "pos_embed")
    if len(p.shape) == 3 and p.shape[0] == 1:
        p = p[0]
    if len(p.shape) != 2:
        raise AnalysisError(f"pos_embed must be (tokens, dim) or (1, tokens, dim), got {tuple(p.shape)}")
    if not 0 <= num_prefix_tokens < p.shape[0]:
        raise AnalysisError(
            f"num_prefix_tokens {num_prefix_tokens} leaves no patch positions of {p.shape[0]}"
        )
    p = ops.cast(p[num_prefix_tokens:], "float32")
    p = p / ops.sqrt(ops.sum(p * p, axis=-1, keepdims=True))
    rows = p if patches is None else ops.take(p, ops.convert_to_tensor(np.asarray(patches, np.int32)), axis=0)
    return ops.matmul(rows, ops.transpose(p))  # (N or K, N)


def projection_filters(params):
    """The patch embedding's filters as images: (D, P, P, 3), each scaled to [0, 1] on its own.

    params: a vitops params dict, a loaded model, or the (P, P, 3, D) kernel itself.
    """
    if hasattr(params, "variables_by_key"):
        params = params.variables_by_key
    kernel = params["patch_embed.kernel"] if hasattr(params, "keys") else params
    k = as_tensor(kernel, "patch_embed.kernel")
    if len(k.shape) != 4 or k.shape[2] != 3 or k.shape[0] != k.shape[1]:
        raise AnalysisError(f"patch_embed.kernel must be (P, P, 3, D), got {tuple(k.shape)}")
    k = ops.transpose(ops.cast(k, "float32"), (3, 0, 1, 2))  # (D, P, P, 3)
    lo = ops.min(k, axis=(1, 2, 3), keepdims=True)
    hi = ops.max(k, axis=(1, 2, 3), keepdims=True)
    return (k - lo) / ops.maximum(hi - lo, 1e-12)


def cls_trajectory(hidden, token: int = 0):
    """The CLS token through the blocks: list of (B, T, D) -> (tokens (B, L, D), cos (B, L)).

    cos[:, l] is the cosine similarity of the token after step l to its final state, so the
    last entry is 1. hidden is out["hidden"]: the embeddings, then each block's output.
    """
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise AnalysisError("hidden must be a non-empty list of (B, T, D) arrays, e.g. out['hidden']")
    hs = [as_tensor(h, "hidden") for h in hidden]
    for h in hs:
        if len(h.shape) != 3:
            raise AnalysisError(f"hidden states must be (B, T, D), got {tuple(h.shape)}")
    tokens = ops.stack([ops.cast(h[:, token], "float32") for h in hs], axis=1)  # (B, L, D)
    return tokens, cosine_to_final(tokens)


def cosine_to_final(tokens):
    """(B, S, D) one token's states over S steps -> (B, S): each state's cosine similarity to
    the last one. The last entry is exactly 1 (0 for a zero final state); a zero state has
    cosine 0 with anything, not NaN. The one kernel behind `cls_trajectory` and the in-forward
    reduction of the same name."""
    norms = ops.sqrt(ops.sum(tokens * tokens, axis=-1))  # (B, S)
    unit = tokens / ops.maximum(norms, 1e-30)[..., None]
    cos = ops.sum(unit[:, :-1] * unit[:, -1:], axis=-1)  # (B, S - 1)
    last = ops.cast(norms[:, -1:] > 0, cos.dtype)  # the final state with itself
    return ops.concatenate([cos, last], axis=1)


__all__ = [
    "position_similarity",
    "reference_patches",
    "projection_filters",
    "cls_trajectory",
    "cosine_to_final",
]
