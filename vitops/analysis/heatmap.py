"""DINO attention heat maps (Caron et al. 2021, Fig. 1 and visualize_attention.py).

The last block's attention from the CLS token to every patch, one map per head. With a
threshold t, each head's map becomes a mask of the smallest set of patches that together hold
a share t of that head's attention mass (DINO's visualisation with --threshold).
"""

from __future__ import annotations

from keras import ops

from ..errors import AnalysisError
from ._checks import as_tensor, check_rank, patch_grid


def attention_heatmaps(attention, grid=None, num_prefix_tokens: int = 1, threshold=None):
    """(B, H, T, T) of the last block (or the list of all blocks) -> (B, H, I, J).

    Without threshold: the CLS-to-patch attention weights. With threshold in (0, 1]: boolean
    masks of the patches that hold that share of each head's mass, largest weights first.
    grid: (I, J); inferred as square when omitted.
    """
    if isinstance(attention, (list, tuple)):
        if not attention:
            raise AnalysisError("attention is an empty list")
        attention = attention[-1]
    attention = as_tensor(attention, "attention")
    check_rank(attention, 4, "attention", "(B, heads, tokens, tokens)")
    gh, gw = patch_grid(attention.shape[-1], num_prefix_tokens, grid)
    maps = attention[:, :, 0, num_prefix_tokens:]  # (B, H, N)
    if threshold is not None:
        maps = mass_masks(maps, threshold)
    return ops.reshape(maps, (-1, maps.shape[1], gh, gw))


def mass_masks(maps, threshold: float):
    """(..., N) non-negative weights -> boolean masks (..., N) of the smallest set of entries that
    holds a share `threshold` of each map's mass, largest weights first (DINO's --threshold)."""
    if not 0.0 < threshold <= 1.0:
        raise AnalysisError(f"threshold must be in (0, 1], got {threshold}")
    maps = as_tensor(maps, "maps")
    # DINO: sort ascending, cumulative share, keep where it exceeds 1 - threshold.
    order = ops.argsort(maps, axis=-1)
    ranked = ops.take_along_axis(maps, order, axis=-1)
    share = ops.cumsum(ranked, axis=-1) / ops.sum(ranked, axis=-1, keepdims=True)
    keep_sorted = share > (1.0 - threshold)
    rank = ops.argsort(order, axis=-1)  # inverse permutation: each patch's place in the order
    return ops.take_along_axis(keep_sorted, rank, axis=-1)
