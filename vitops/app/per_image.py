"""Per-image results of `vitops analyze`, written as the run goes, one set of files per model:

    per_image/<model>.csv            one row per analysed image: position in the image list,
                                     file name, top-5 classes (name, probability) when the model
                                     has a head, mean attention distance of each block (over heads)
    per_image/<model>_distance.npy   (n, blocks, heads) float32 mean attention distance, pixels
    per_image/<model>_rollout.npy    (n, I, J) float32 attention rollout (CLS row)
    per_image/<model>_top.npy        (n, 5) int32 top-5 classes, and _prob.npy their probabilities
    per_image/<model>_lens.npy       (n, blocks + 1) float32 logit lens: the probability each
                                     step (0 = embeddings) gives the final top-1 class, or for a
                                     headless model the cosine of its features to the final ones
    per_image/<model>_norm_max.npy   (n, blocks + 1) float32 the largest patch-token norm after
                                     the embedding and after each block

n is the length of the image list; row i of each .npy belongs to image i (the csv's `position`),
NaN (or -1 for classes) where that image was not analysed. `pandas.read_csv` and
`numpy.load(..., mmap_mode="r")` read them without loading everything.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from ..analysis.accumulate import Accumulator, setting_int, setting_shape, state_array
from ..errors import AnalysisError, clip
from ..io.bounded_json import parse_object
from ..io.names import inside, safe_name

TOP_K = 5
ARRAYS = ("distance", "rollout", "top", "prob", "lens", "norm_max")
MAX_NAME_CHARS = 4096  # a display name (inputs.image_names); file systems allow 255 bytes a name


# A cell starting with one of these is a formula to spreadsheet programs (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """A text cell (an image name, a class name) that a spreadsheet shows as text: a leading
    formula character gets a "'" before it."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def names_to_bytes(names) -> np.ndarray:
    """Image names as uint8 bytes for a state file: a JSON list (any character survives)."""
    return np.frombuffer(json.dumps(list(names)).encode("ascii"), np.uint8).copy()


def names_from_bytes(data: np.ndarray, count: int) -> list[str]:
    """`names_to_bytes` undone: exactly `count` names of at most MAX_NAME_CHARS characters."""
    raw = bytes(np.asarray(data, np.uint8))  # as large as the state file allows, no larger
    names = parse_object(raw, "image names", AnalysisError, max(len(raw), 2), top=list)
    if len(names) != count or not all(isinstance(n, str) and len(n) <= MAX_NAME_CHARS for n in names):
        raise AnalysisError(f"image names: expected {count:,} names of at most {MAX_NAME_CHARS} characters")
    return names


class PerImage(Accumulator):
    """Per-image rows of one model, keyed by position in the image list: what a state file
    carries so that shards merge into the per-image files one run writes."""

    kind = "per_image"

    def __init__(self, depth: int, heads: int, grid, has_head: bool):
        self.depth, self.heads, self.grid, self.has_head = int(depth), int(heads), tuple(grid), bool(has_head)
        self.positions = np.zeros((0,), np.int64)
        self.names: list[str] = []
        self.arrays = {
            "distance": np.zeros((0, self.depth, self.heads), np.float32),
            "rollout": np.zeros((0, *self.grid), np.float32),
            "top": np.zeros((0, TOP_K), np.int32),
            "prob": np.zeros((0, TOP_K), np.float32),
            "lens": np.zeros((0, self.depth + 1), np.float32),
            "norm_max": np.zeros((0, self.depth + 1), np.float32),
        }

    def settings(self) -> dict:
        return {"depth": self.depth, "heads": self.heads, "grid": list(self.grid), "has_head": self.has_head}

    @property
    def empty(self) -> bool:
        return len(self.positions) == 0

    def add(self, positions, names, **arrays) -> None:
        self.positions = np.concatenate([self.positions, np.asarray(positions, np.int64)])
        self.names.extend(names)
        for k in ARRAYS:
            self.arrays[k] = np.concatenate([self.arrays[k], np.asarray(arrays[k], self.arrays[k].dtype)])

    def state(self) -> dict:
        return {"positions": self.positions, "names": names_to_bytes(self.names), **self.arrays}

    def set_state(self, arrays) -> None:
        positions = state_array(arrays, "positions", "iu", ndim=1).astype(np.int64)
        n = len(positions)
        shapes = {
            "distance": (n, self.depth, self.heads),
            "rollout": (n, *self.grid),
            "top": (n, TOP_K),
            "prob": (n, TOP_K),
            "lens": (n, self.depth + 1),
            "norm_max": (n, self.depth + 1),
        }
        kinds = {"distance": "f", "rollout": "f", "top": "i", "prob": "f", "lens": "f", "norm_max": "f"}
        checked = {k: state_array(arrays, k, kinds[k], shapes[k]) for k in ARRAYS}
        if n and (positions.min() < 0 or len(np.unique(positions)) != n):
            raise AnalysisError("its positions are negative or repeat")
        self.names = names_from_bytes(state_array(arrays, "names", "u", ndim=1), n)
        self.positions = positions
        self.arrays = {k: v.astype(self.arrays[k].dtype) for k, v in checked.items()}

    @classmethod
    def from_settings(cls, settings: dict) -> PerImage:
        """From a state file's settings, each checked for its type and range."""
        grid = setting_shape(settings.get("grid"), "grid", max_side=4096)
        if len(grid) != 2 or min(grid) < 1 or not isinstance(settings.get("has_head"), bool):
            raise AnalysisError(
                f"per-image settings {clip(settings)} are not depth, heads, [rows, cols], has_head"
            )
        return cls(
            setting_int(settings, "depth", 1, 1024),
            setting_int(settings, "heads", 1, 1024),
            grid,
            settings["has_head"],
        )

    def _merge_state(self, other) -> None:
        overlap = np.intersect1d(self.positions, other.positions)
        if overlap.size:
            raise AnalysisError(
                f"the states overlap: {overlap.size} image(s) were analysed in both "
                f"(first at position {int(overlap[0])}); were the same shard's states given twice?"
            )
        self.add(other.positions, other.names, **other.arrays)
        order = np.argsort(self.positions, kind="stable")
        self.positions = self.positions[order]
        self.names = [self.names[i] for i in order]
        self.arrays = {k: v[order] for k, v in self.arrays.items()}


class PerImageWriter:
    """Streams one model's per-image rows into the files described in the module docstring."""

    def __init__(
        self, folder, label: str, n: int, depth: int, heads: int, grid, labels=None, has_head: bool = True
    ):
        os.makedirs(folder, exist_ok=True)
        label = safe_name(label, fallback="model")  # a file name, whatever the state file said
        self.folder, self.label, self.n, self.labels, self.has_head = folder, label, n, labels, has_head
        self.depth, self.heads, self.grid = depth, heads, tuple(grid)
        shapes = {
            "distance": ((depth, heads), np.float32),
            "rollout": (self.grid, np.float32),
            "top": ((TOP_K,), np.int32),
            "prob": ((TOP_K,), np.float32),
            "lens": ((depth + 1,), np.float32),
            "norm_max": ((depth + 1,), np.float32),
        }
        self.maps = {}
        for key, (shape, dtype) in shapes.items():
            m = np.lib.format.open_memmap(self.path(key), mode="w+", dtype=dtype, shape=(n, *shape))
            m[:] = -1 if dtype == np.int32 else np.nan
            self.maps[key] = m
        # open for the writer's life (rows arrive batch by batch); `close` closes it
        self._csv = open(inside(folder, f"{label}.csv"), "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._rows = csv.writer(self._csv)
        header = ["position", "image"]
        if has_head:
            for r in range(1, TOP_K + 1):
                header += [f"top{r}_class", f"top{r}_label", f"top{r}_probability"]
        header += [f"distance_block{b}" for b in range(depth)]
        self._rows.writerow(header)

    def path(self, key: str) -> str:
        return str(inside(self.folder, f"{self.label}_{key}.npy"))

    def write(
        self, positions, names, distance, rollout, top=None, prob=None, lens=None, norm_max=None
    ) -> None:
        """One batch: positions (b,), names, distance (b, L, H), rollout (b, I, J),
        top (b, 5) classes and prob (b, 5) probabilities when the model has a head, lens and
        norm_max (b, L + 1) (module docstring)."""
        idx = np.asarray(positions, np.int64)
        self.maps["distance"][idx] = distance
        self.maps["rollout"][idx] = rollout
        if lens is not None:
            self.maps["lens"][idx] = lens
        if norm_max is not None:
            self.maps["norm_max"][idx] = norm_max
        if top is not None:
            self.maps["top"][idx] = top
            self.maps["prob"][idx] = prob
        per_block = np.asarray(distance, np.float64).mean(axis=-1)  # (b, L)
        for j, (pos, name) in enumerate(zip(positions, names)):
            row = [int(pos), spreadsheet_text(name)]
            if self.has_head:
                for c, p in zip(top[j], prob[j]):
                    label = self.labels[c] if self.labels and 0 <= c < len(self.labels) else str(int(c))
                    row += [int(c), spreadsheet_text(label), f"{float(p):.9g}"]
            row += [f"{v:.9g}" for v in per_block[j]]
            self._rows.writerow(row)

    def collect(self, positions, names) -> PerImage:
        """The rows written for these positions, as a PerImage (for a state file)."""
        acc = PerImage(self.depth, self.heads, self.grid, self.has_head)
        idx = np.asarray(positions, np.int64)
        acc.add(idx, names, **{k: np.asarray(m[idx]) for k, m in self.maps.items()})
        return acc

    def write_all(self, acc: PerImage) -> None:
        """Every row of a PerImage (merged shards), in position order."""
        b = 256
        for s in range(0, len(acc.positions), b):
            top = acc.arrays["top"][s : s + b] if self.has_head else None
            prob = acc.arrays["prob"][s : s + b] if self.has_head else None
            self.write(
                acc.positions[s : s + b],
                acc.names[s : s + b],
                acc.arrays["distance"][s : s + b],
                acc.arrays["rollout"][s : s + b],
                top,
                prob,
                acc.arrays["lens"][s : s + b],
                acc.arrays["norm_max"][s : s + b],
            )

    def flush(self) -> None:
        for m in self.maps.values():
            m.flush()
        self._csv.flush()

    def close(self) -> None:
        self.flush()
        self.maps.clear()
        self._csv.close()
