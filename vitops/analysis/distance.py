"""Mean attention distance (ViT paper, Fig. 7; Raghu et al. 2021).

The mean attention distance of a head is, averaged over query patches, the sum over key patches
of attention weight times the pixel distance between the two patch centres. Prefix tokens (CLS,
distillation) are removed first; renormalising the remaining rows is an option, off by default
as in the original snippet.
"""

from __future__ import annotations

import functools

import numpy as np
from keras import ops

from ..backend.compile import compiled
from ..backend.reduce import weighted_total
from ..errors import AnalysisError, clip
from ._checks import as_grid, as_tensor, attention_list, check_rank, patch_grid
from .accumulate import Moments, setting_int, setting_shape


@functools.lru_cache(maxsize=32)
def _distance_matrix_np(grid: tuple[int, int], patch_size: float) -> np.ndarray:
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    return patch_size * np.hypot(rows[:, None] - rows[None, :], cols[:, None] - cols[None, :])


def distance_matrix(grid, patch_size):
    """Pixel distances between patch centres, (N, N) float32 with N = rows * cols.

    grid: int (square) or (I, J); patches are numbered row-major, as the model's tokens.
    """
    if patch_size <= 0:
        raise AnalysisError(f"patch_size must be positive, got {patch_size}")
    return ops.convert_to_tensor(_distance_matrix_np(as_grid(grid), float(patch_size)), "float32")


@functools.lru_cache(maxsize=32)
def _padded_distance_np(grid: tuple[int, int], patch_size: float, prefix: int) -> np.ndarray:
    """(T, T) distances with zero rows and columns for the prefix tokens."""
    n = grid[0] * grid[1]
    d = np.zeros((prefix + n, prefix + n), np.float32)
    d[prefix:, prefix:] = _distance_matrix_np(grid, patch_size)
    return d


def padded_distance(grid, patch_size: float, num_prefix_tokens: int) -> np.ndarray:
    """(T, T) pixel distances between tokens, zero on the prefix tokens' rows and columns."""
    return _padded_distance_np(as_grid(grid), float(patch_size), int(num_prefix_tokens))


def mean_distance_of(attention, dist, num_prefix_tokens: int, renormalize: bool, num_patches: int):
    """(B, H, T, T) probabilities and padded (T, T) distances -> (B, H): the kernel itself,
    uncompiled (the forward pass reduces the same sums a chunk of query rows at a time, in
    vitops.analysis.reductions)."""
    b, h, t, _ = attention.shape
    dist = ops.cast(dist, attention.dtype)
    if not renormalize:
        # sum over (q, k) of a * d, with d zero on prefix rows and columns: one pass over the
        # attention, no sliced copy of it.
        return weighted_total(attention, dist) / num_patches  # (B, H)
    a = attention[:, :, num_prefix_tokens:, num_prefix_tokens:]  # (B, H, N, N)
    d = dist[num_prefix_tokens:, num_prefix_tokens:]
    per_query = ops.sum(a * d, axis=-1) / ops.sum(a, axis=-1)  # (B, H, N)
    return ops.mean(per_query, axis=-1)


_mean_distance = compiled(
    mean_distance_of, static_argnames=("num_prefix_tokens", "renormalize", "num_patches"), inference=True
)


def mean_attention_distance(
    attention, patch_size, num_prefix_tokens: int = 1, renormalize: bool = False, grid=None
):
    """Mean attention distance per image and head, in pixels: (B, H, T, T) -> (B, H).

    grid: (I, J), the patch grid; inferred as square when omitted. renormalize makes
    each query's attention over the patches sum to 1 after the prefix tokens are removed.
    """
    attention = as_tensor(attention, "attention")
    check_rank(attention, 4, "attention", "(B, heads, tokens, tokens)")
    gh, gw = patch_grid(attention.shape[-1], num_prefix_tokens, grid)
    if patch_size <= 0:
        raise AnalysisError(f"patch_size must be positive, got {patch_size}")
    dist = _padded_distance_np((gh, gw), float(patch_size), num_prefix_tokens)
    return _mean_distance(
        attention,
        dist,
        num_prefix_tokens=num_prefix_tokens,
        renormalize=bool(renormalize),
        num_patches=gh * gw,
    )


class AttentionDistance(Moments):
    """Streaming mean attention distance over an image set, per block and head.

    acc = AttentionDistance(patch_size=16)
    for batch in images: acc.update(model(batch, return_attention=True)["attention"])
    acc.result()  # {"mean": (blocks, heads), "std": (blocks, heads), "count": images}

    Only (blocks, heads) running sums are kept (float64, on the host), never attention maps.
    `update_distances` takes per-image distances computed elsewhere (the forward pass's
    reductions). Merges with another of the same settings (see `Accumulator`).
    """

    kind = "attention_distance"

    def __init__(
        self, patch_size, num_prefix_tokens: int = 1, renormalize: bool = False, grid=None, shape=None
    ):
        super().__init__(shape)
        self.patch_size, self.num_prefix_tokens = patch_size, num_prefix_tokens
        self.renormalize, self.grid = renormalize, None if grid is None else as_grid(grid)

    def settings(self) -> dict:
        return {
            "patch_size": self.patch_size,
            "num_prefix_tokens": self.num_prefix_tokens,
            "renormalize": bool(self.renormalize),
            "grid": None if self.grid is None else list(self.grid),
        }

    @classmethod
    def from_settings(cls, settings: dict) -> AttentionDistance:
        """From a state file's settings, each checked for its type and range."""
        unknown = sorted(set(settings) - {"patch_size", "num_prefix_tokens", "renormalize", "grid"})
        if unknown:
            raise AnalysisError(f"unknown attention-distance settings {clip(unknown)}")
        patch = setting_int(settings, "patch_size", 1, 1024)
        prefix = setting_int(settings, "num_prefix_tokens", 0, 1024)
        if not isinstance(settings.get("renormalize", False), bool):
            raise AnalysisError(
                f"setting renormalize must be true or false, got {clip(settings['renormalize'])}"
            )
        grid = settings.get("grid")
        if grid is not None:
            grid = setting_shape(grid, "grid", max_side=4096)
            if len(grid) != 2 or min(grid) < 1:
                raise AnalysisError(f"setting grid must be [rows, cols], got {clip(settings['grid'])}")
        return cls(patch, prefix, settings.get("renormalize", False), grid)

    def update(self, attentions) -> None:
        """attentions: list of per-block (B, H, T, T), e.g. out["attention"]."""
        attentions = attention_list(attentions)
        per_block = ops.stack(
            [
                mean_attention_distance(
                    a, self.patch_size, self.num_prefix_tokens, self.renormalize, self.grid
                )
                for a in attentions
            ],
            axis=1,
        )  # (B, L, H)
        self.update_distances(ops.convert_to_numpy(per_block))

    def update_distances(self, distances) -> None:
        """distances: (B, blocks, heads) per image, in pixels."""
        d = np.asarray(distances, np.float64)
        if d.ndim != 3:
            raise AnalysisError(f"distances must be (images, blocks, heads), got shape {d.shape}")
        if self.shape is not None and d.shape[1:] != self.shape:
            raise AnalysisError(
                f"this batch has {d.shape[1]} blocks x {d.shape[2]} heads, earlier "
                f"batches had {self.shape[0]} x {self.shape[1]}"
            )
        self.update_values(d)
