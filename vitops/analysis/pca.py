"""Principal components of patch features over a data set, and DINOv2's PCA feature maps.

Oquab et al. (2023, "DINOv2", Sec. 7.1 and Fig. 1) show a model's patch features by their
principal components: the first three as the red, green and blue of each patch. The first
component, thresholded, separates the main object from the background; a second PCA fitted
on the foreground patches alone, drawn in RGB, shows the object's parts.

`Covariance` accumulates the patch tokens' mean and scatter in float64 from the in-forward
statistics of each batch (`Reductions(pca=True)`: pca_mean, pca_scatter and the number of
tokens), merged with Chan, Golub and LeVeque's pairwise update (1979): batches, shards and
devices combine exactly, and nothing is lost to cancellation when the mean is large. Its
`result()` is the eigen-decomposition of the covariance. Registers and class tokens are not
patches and never enter it.

The sign of a principal component is arbitrary. For the foreground the first component is
oriented so that the patches on the image border, mostly background in object-centric photos,
score below zero on average; the foreground is then the patches above zero, as in DINOv2.
"""

from __future__ import annotations

import numpy as np

from ..errors import AnalysisError
from .accumulate import Accumulator, setting_int, state_array, state_count


class Covariance(Accumulator):
    """Mean and covariance of D-dimensional vectors over everything fed to it (float64)."""

    kind = "covariance"

    def __init__(self, dim: int):
        self.dim = int(dim)
        self.count = 0
        self.mean = np.zeros(self.dim)
        self.scatter = np.zeros((self.dim, self.dim))

    def settings(self) -> dict:
        return {"dim": self.dim}

    @classmethod
    def from_settings(cls, settings: dict) -> Covariance:
        return cls(setting_int(settings, "dim", 1, 1 << 16))

    @property
    def empty(self) -> bool:
        return self.count == 0

    def update(self, vectors) -> None:
        """vectors (..., D): any number of them at once."""
        v = np.asarray(vectors, np.float64).reshape(-1, self.dim)
        if len(v):
            mean = v.mean(axis=0)
            dev = v - mean
            self.update_scatter(len(v), mean, dev.T @ dev)

    def update_scatter(self, n: int, mean, scatter) -> None:
        """n vectors given by their mean (D,) and the scatter (D, D) of their deviations from it."""
        mean, scatter = np.asarray(mean, np.float64), np.asarray(scatter, np.float64)
        if mean.shape != (self.dim,) or scatter.shape != (self.dim, self.dim):
            raise AnalysisError(
                f"PCA statistics must be a mean ({self.dim},) and a scatter ({self.dim}, {self.dim}), "
                f"got {mean.shape} and {scatter.shape}"
            )
        if n <= 0:
            return
        if self.count == 0:
            self.count, self.mean, self.scatter = int(n), mean, (scatter + scatter.T) / 2
            return
        total = self.count + n
        delta = mean - self.mean
        self.scatter = (
            self.scatter + (scatter + scatter.T) / 2 + np.outer(delta, delta) * (self.count * n / total)
        )
        self.mean = self.mean + delta * (n / total)
        self.count = total

    def state(self) -> dict[str, np.ndarray]:
        return {"count": np.asarray(self.count, np.int64), "mean": self.mean, "scatter": self.scatter}

    def set_state(self, arrays) -> None:
        self.count = state_count(arrays)
        self.mean = state_array(arrays, "mean", "f", (self.dim,)).astype(np.float64)
        self.scatter = state_array(arrays, "scatter", "f", (self.dim, self.dim)).astype(np.float64)

    def _merge_state(self, other) -> None:
        self.update_scatter(other.count, other.mean, other.scatter)

    def result(self) -> dict:
        """ "variance" (D,) the covariance's eigenvalues, largest first (population covariance,
        divided by the count); "ratio" each one's share of the total; "components" (D, D) the
        unit eigenvectors as columns, in the same order; "mean" (D,); "count"."""
        if not self.count:
            raise AnalysisError("nothing was added: call update() first")
        if not np.isfinite(self.scatter).all():  # a batch of NaN images (or an overflow)
            nan = np.full(self.dim, np.nan)
            return {
                "variance": nan,
                "ratio": nan,
                "components": np.full((self.dim, self.dim), np.nan),
                "mean": self.mean,
                "count": self.count,
            }
        values, vectors = np.linalg.eigh(self.scatter / self.count)
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        total = values.sum()
        return {
            "variance": values,
            "ratio": values / total if total > 0 else np.zeros_like(values),
            "components": vectors[:, order],
            "mean": self.mean,
            "count": self.count,
        }


def project(tokens, mean, components, k: int = 3) -> np.ndarray:
    """(..., D) tokens -> (..., k) their coordinates on the first k components (centred)."""
    t = np.asarray(tokens, np.float64)
    return (t - mean) @ np.asarray(components)[:, :k]


def to_rgb(scores, mask=None) -> np.ndarray:
    """(S, I, J, 3) coordinates -> RGB in [0, 1], each channel scaled by its minimum and maximum
    over all the images (over the masked patches only, the others black)."""
    s = np.asarray(scores, np.float64)
    keep = np.ones(s.shape[:-1], bool) if mask is None else np.asarray(mask, bool)
    rgb = np.zeros(s.shape)
    if keep.any():
        lo = s[keep].min(axis=0)
        hi = s[keep].max(axis=0)
        rgb = np.clip((s - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0, 1.0)
    rgb[~keep] = 0.0
    return rgb


def border(grid) -> np.ndarray:
    """(I, J) bool: the patches on the image's border."""
    b = np.zeros(grid, bool)
    b[0], b[-1], b[:, 0], b[:, -1] = True, True, True, True
    return b


def feature_maps(tokens, result: dict, grid) -> dict:
    """DINOv2's figures for some images: tokens (S, N, D) their patch tokens (N = I J, row-major),
    result `Covariance.result()` over the data set. Returns "rgb" (S, I, J, 3) their first three
    components over the data set; "first" (S, I, J) the first component, oriented so that the
    border patches score below zero on average; "foreground" (S, I, J) bool, first > 0;
    "foreground_rgb" (S, I, J, 3) the first three components of a second PCA fitted on the
    foreground patches of these images (background black); "foreground_ratio" that PCA's shares
    of variance."""
    t = np.asarray(tokens, np.float64)
    s, n, _ = t.shape
    rows, cols = grid
    if n != rows * cols:
        raise AnalysisError(f"{n} patch tokens do not fill a {rows} x {cols} grid")
    scores = project(t, result["mean"], result["components"]).reshape(s, rows, cols, -1)  # (S, I, J, 3)
    first = scores[..., 0]
    if first[:, border(grid)].mean() > 0:
        first = -first
    foreground = first > 0
    fg = t.reshape(s, rows, cols, -1)[foreground]  # (F, D)
    second = np.zeros((s, rows, cols, 3))
    ratio = np.zeros(3)
    if len(fg) >= 2:
        local = Covariance(t.shape[-1])
        local.update(fg)
        r = local.result()
        k = min(3, r["components"].shape[1])
        second[..., :k] = project(t.reshape(s, rows, cols, -1), r["mean"], r["components"], k)
        ratio[:k] = r["ratio"][:k]
    return {
        "rgb": to_rgb(scores),
        "first": first,
        "foreground": foreground,
        "foreground_rgb": to_rgb(second, foreground),
        "foreground_ratio": ratio,
    }
