"""Token norms and the logit lens over a data set, from the in-forward reductions
`token_norms` and `logit_lens` (`vitops.analysis.reductions.Reductions`).

Token norms: Darcet et al. (ICLR 2024, "Vision Transformers Need Registers") found that large
ViTs trained long enough repurpose a few low-information patch tokens as global scratch space;
those tokens have norms an order of magnitude above the others (their Fig. 3). `NormHistogram`
keeps, per block and per kind of token (class tokens, registers, patches), the count, sum and
maximum of the norms and their histogram on fixed logarithmic bins, so that shards and batches
merge exactly and the percentiles of the whole data set come back within one bin (2.2 % wide).
The default outlier threshold is Tukey's far fence of the last block's patch norms,
Q3 + 3 (Q3 - Q1) (Tukey 1977, "Exploratory Data Analysis"): data-driven, and far enough out that
a unimodal spread of norms flags almost nothing.

Logit lens (nostalgebraist 2020, "interpreting GPT: the logit lens"): each block's tokens read
by the final norm and head as if it were the last block (`vitops.core.vit.readout`).
`lens_scores` turns those readouts into the numbers the report averages: for a classifier, per
block, whether its top-1 class is the final prediction and the probability it gives the final
class; for a headless model the cosine of its features to the final features.
"""

from __future__ import annotations

import numpy as np

from ..errors import AnalysisError
from .accumulate import Accumulator, setting_int, state_array
from .tokens import TOKEN_GROUPS

# Log-spaced bin edges from 1e-4 to 1e6: 10 decades, 1,024 bins (each 2.2 % wide). Norms
# outside fall in the first or last (open) bin; the exact maximum is kept apart.
NORM_EDGES = np.logspace(-4, 6, 1025)
PERCENTILES = (1, 25, 50, 75, 99)
FENCE = 3.0  # Tukey's far fence: Q3 + FENCE * (Q3 - Q1)


def group_slices(num_class: int, num_registers: int) -> list[slice]:
    """The token positions of each of TOKEN_GROUPS, in the model's order."""
    cut = num_class + num_registers
    return [slice(0, num_class), slice(num_class, cut), slice(cut, None)]


class NormHistogram(Accumulator):
    """Token norms per block (after the embedding and after each of the blocks: depth + 1 rows)
    and per kind of token (TOKEN_GROUPS), over every image fed to it."""

    kind = "norm_histogram"

    def __init__(self, blocks: int, num_class: int, num_registers: int):
        self.blocks, self.num_class, self.num_registers = int(blocks), int(num_class), int(num_registers)
        g, e = len(TOKEN_GROUPS), len(NORM_EDGES) + 1  # bins, and one open bin at each end
        self.counts = np.zeros((self.blocks, g, e), np.int64)
        self.sums = np.zeros((self.blocks, g), np.float64)
        self.maxima = np.full((self.blocks, g), -np.inf)

    def settings(self) -> dict:
        return {"blocks": self.blocks, "num_class": self.num_class, "num_registers": self.num_registers}

    @classmethod
    def from_settings(cls, settings: dict) -> NormHistogram:
        return cls(
            setting_int(settings, "blocks", 1, 4096),
            setting_int(settings, "num_class", 0, 2),
            setting_int(settings, "num_registers", 0, 4096),
        )

    @property
    def empty(self) -> bool:
        return not self.counts.any()

    def update(self, norms) -> None:
        """norms: (B, blocks, T) every token's norm, tokens in the model's order."""
        v = np.asarray(norms, np.float64)
        if v.ndim != 3 or v.shape[1] != self.blocks or v.shape[2] <= self.num_class + self.num_registers:
            raise AnalysisError(
                f"token norms must be (images, {self.blocks}, tokens) with patches after "
                f"{self.num_class + self.num_registers} prefix tokens, got shape {v.shape}"
            )
        # A non-finite norm (an image of NaNs, an overflow) lands in the open top bin and makes
        # that group's sum and maximum NaN or infinite: reported (as null), not hidden.
        for g, part in enumerate(group_slices(self.num_class, self.num_registers)):
            w = v[:, :, part]  # (B, blocks, t)
            if not w.shape[2]:
                continue
            bins = np.searchsorted(NORM_EDGES, w, side="right")  # 0: below, len(edges): above
            for i in range(self.blocks):
                self.counts[i, g] += np.bincount(bins[:, i].ravel(), minlength=self.counts.shape[2])
            self.sums[:, g] += w.sum(axis=(0, 2))
            self.maxima[:, g] = np.maximum(self.maxima[:, g], w.max(axis=(0, 2)))

    def state(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts, "sums": self.sums, "maxima": self.maxima}

    def set_state(self, arrays) -> None:
        shape = (self.blocks, len(TOKEN_GROUPS))
        counts = state_array(arrays, "counts", "iu", (*shape, len(NORM_EDGES) + 1))
        if (counts < 0).any():
            raise AnalysisError("its norm histogram has negative counts")
        self.counts = counts.astype(np.int64)
        self.sums = state_array(arrays, "sums", "f", shape).astype(np.float64)
        self.maxima = state_array(arrays, "maxima", "f", shape).astype(np.float64)

    def _merge_state(self, other) -> None:
        self.counts = self.counts + other.counts
        self.sums = self.sums + other.sums
        self.maxima = np.maximum(self.maxima, other.maxima)

    def percentile(self, q: float, block: int, group: int) -> float:
        """The q-th percentile (0-100) of one block's and group's norms, interpolated within its
        bin on the log scale (NaN for a group without tokens)."""
        c = self.counts[block, group]
        n = c.sum()
        if not n:
            return float("nan")
        target = q / 100.0 * n
        cum = np.cumsum(c)
        k = int(np.searchsorted(cum, target, side="left"))
        k = min(k, len(c) - 1)
        if k == 0:  # below the first edge: the maximum is the best bound there too
            return float(min(NORM_EDGES[0], self.maxima[block, group]))
        if k == len(c) - 1:  # above the last edge: the maximum is the best bound
            return float(self.maxima[block, group])
        before = cum[k - 1] if k else 0
        frac = (target - before) / c[k] if c[k] else 0.0
        lo, hi = np.log(NORM_EDGES[k - 1]), np.log(NORM_EDGES[k])
        return float(min(np.exp(lo + frac * (hi - lo)), self.maxima[block, group]))

    def fence(self, block: int = -1) -> float:
        """Tukey's far fence of one block's patch norms (the default outlier threshold)."""
        g = TOKEN_GROUPS.index("patches")
        block = block % self.blocks
        q1, q3 = self.percentile(25, block, g), self.percentile(75, block, g)
        return q3 + FENCE * (q3 - q1)

    def above(self, threshold: float, block: int, group: int) -> int:
        """How many tokens' norms exceed threshold (counted by bins: exact unless threshold
        falls inside a bin, whose tokens are then counted as above)."""
        k = int(np.searchsorted(NORM_EDGES, threshold, side="right"))
        return int(self.counts[block, group, k:].sum())

    def result(self, threshold: float | None = None) -> dict:
        """Per block and group (blocks, groups): count, mean, max and PERCENTILES ("p50", ...),
        and the tokens above the outlier threshold (the given one, else the far fence); only the
        groups the model has (named in "groups")."""
        if self.empty:
            raise AnalysisError("nothing was added: call update() first")
        count = self.counts.sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, self.sums / np.maximum(count, 1), np.nan)
        maxima = np.where(count > 0, self.maxima, np.nan)
        g = range(len(TOKEN_GROUPS))
        pct = {
            f"p{q}": np.array([[self.percentile(q, i, j) for j in g] for i in range(self.blocks)])
            for q in PERCENTILES
        }
        chosen = threshold is not None
        t = float(threshold) if chosen else self.fence()
        flagged = np.array([[self.above(t, i, j) for j in g] for i in range(self.blocks)])
        present = count.any(axis=0)  # a model without registers has no column for them
        keep = lambda a: a[:, present]
        return {
            "groups": [name for name, p in zip(TOKEN_GROUPS, present) if p],
            "count": keep(count),
            "mean": keep(mean),
            "max": keep(maxima),
            **{k: keep(v) for k, v in pct.items()},
            "threshold": t,
            "threshold_rule": "given" if chosen else f"Q3 + {FENCE:g} (Q3 - Q1) of the last block's patches",
            "above_threshold": keep(flagged),
        }


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def lens_scores(lens, has_head: bool) -> np.ndarray:
    """(B, L+1, K) readouts (`Reductions(logit_lens=True)`) -> per image and block, float64:
    a classifier's (B, L+1, 2), [top-1 equals the final top-1, probability of the final top-1
    class]; a headless model's (B, L+1, 1), [cosine to the final features]."""
    v = np.asarray(lens, np.float64)
    if v.ndim != 3 or v.shape[1] < 1:
        raise AnalysisError(f"logit lens readouts must be (images, blocks, classes), got shape {v.shape}")
    if has_head:
        final = v[:, -1].argmax(axis=-1)  # (B,)
        top = v.argmax(axis=-1)  # (B, L+1)
        p = np.take_along_axis(_softmax(v), final[:, None, None], axis=-1)[..., 0]  # (B, L+1)
        return np.stack([(top == final[:, None]).astype(np.float64), p], axis=-1)
    last = v[:, -1:]
    dot = (v * last).sum(-1)
    norm = np.linalg.norm(v, axis=-1) * np.linalg.norm(last, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0)
    return cos[..., None]
