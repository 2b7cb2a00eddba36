"""Accumulators: statistics over a data set that merge exactly.

Every accumulator keeps its state as numpy arrays on the host (sums in float64) and has
`update(...)`, `result()`, `merge(other)`, and `save(path)` / `load(path)`. Two accumulators fed
two halves of a data set merge into the one a single run over all of it would give (up to
float64 summation order), so shards computed by separate processes, devices or hosts combine.
Merging refuses another kind, or other settings, with an error naming the difference.

Files are safetensors: the arrays under "<name>/<array>", and in the metadata the kind and the
settings of each accumulator (JSON), plus whatever the caller adds (e.g. the model's identity).
"""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np

from ..errors import AnalysisError

_KINDS: dict[str, type] = {}
STATE_FORMAT = "vitops-analysis-state"
STATE_VERSION = "1"


class Accumulator:
    """Base class. Subclasses name their `kind`, their settings (JSON values that must agree to
    merge) and their array state, and say how two states combine (`_merge_state`)."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.kind:
            _KINDS[cls.kind] = cls

    # ---- to implement ----
    def settings(self) -> dict:
        return {}

    def state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def set_state(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _merge_state(self, other: "Accumulator") -> None:
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        raise NotImplementedError

    # ---- shared ----
    def merge(self, other: "Accumulator") -> "Accumulator":
        """Fold `other` into this accumulator (in place); returns self."""
        if type(other) is not type(self):
            raise AnalysisError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        differ = settings_difference(self.settings(), other.settings())
        if differ:
            raise AnalysisError(f"cannot merge {type(self).__name__} states with different settings: {differ}")
        if other.empty:
            return self
        if self.empty:
            self.set_state({k: np.array(v) for k, v in other.state().items()})
        else:
            self._merge_state(other)
        return self

    def save(self, path, metadata: dict | None = None) -> None:
        save_states(path, {"state": self}, metadata)

    @classmethod
    def load(cls, path) -> "Accumulator":
        states, _ = load_states(path)
        if len(states) != 1:
            raise AnalysisError(f"{path} holds {len(states)} accumulators, not one: use load_states")
        (acc,) = states.values()
        if cls is not Accumulator and not isinstance(acc, cls):
            raise AnalysisError(f"{path} holds a {type(acc).__name__}, not a {cls.__name__}")
        return acc

    @classmethod
    def from_settings(cls, settings: dict) -> "Accumulator":
        return cls(**settings)


def settings_difference(a: dict, b: dict) -> str:
    """'' when equal, else each differing setting as 'key: a != b'."""
    keys = sorted(set(a) | set(b))
    return "; ".join(f"{k}: {a.get(k)!r} != {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


class Moments(Accumulator):
    """Mean and standard deviation, per entry, of (B, ...) values over all images fed to it.

    Kept as count, mean and the sum of squared deviations (M2), each batch folded in with Chan,
    Golub and LeVeque's pairwise update (1979): unlike raw sums of squares, this does not lose
    the variance to cancellation when it is small next to the mean, so states merged in any
    order agree to float64 rounding.
    """

    kind = "moments"

    def __init__(self, shape=None, **labels):
        self.shape = None if shape is None else tuple(int(s) for s in shape)
        self.labels = labels  # settings that must agree to merge (e.g. what the values are)
        self.count = 0
        self._mean = self._m2 = None

    def settings(self) -> dict:
        return {"shape": None if self.shape is None else list(self.shape), **self.labels}

    @property
    def empty(self) -> bool:
        return self.count == 0

    def update_values(self, values) -> None:
        """values: (B, ...) one row per image."""
        v = np.asarray(values, np.float64)
        if v.ndim < 1:
            raise AnalysisError(f"values must be (images, ...), got shape {v.shape}")
        if self.shape is None:
            self.shape = v.shape[1:]
        if v.shape[1:] != self.shape:
            raise AnalysisError(f"values of shape {v.shape[1:]} per image, expected {self.shape}")
        if not len(v):
            return
        mean = v.mean(axis=0)
        self._combine(len(v), mean, ((v - mean) ** 2).sum(axis=0))

    def _combine(self, n, mean, m2) -> None:
        if self.count == 0:
            self.count, self._mean, self._m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def result(self) -> dict:
        if not self.count:
            raise AnalysisError("nothing was added: call update() first")
        return {"mean": self._mean, "std": np.sqrt(self._m2 / self.count), "count": self.count}

    def state(self) -> dict[str, np.ndarray]:
        if self.empty:
            return {"count": np.zeros((), np.int64)}
        return {"mean": self._mean, "m2": self._m2, "count": np.asarray(self.count, np.int64)}

    def set_state(self, arrays) -> None:
        self.count = int(arrays["count"])
        if self.count:
            self._mean = np.asarray(arrays["mean"], np.float64)
            self._m2 = np.asarray(arrays["m2"], np.float64)
            self.shape = self._mean.shape

    def _merge_state(self, other) -> None:
        if other._mean.shape != self._mean.shape:
            raise AnalysisError(f"cannot merge moments of shape {other._mean.shape} into {self._mean.shape}")
        self._combine(other.count, other._mean, other._m2)


class Fixed(Accumulator):
    """Arrays that do not depend on the images (e.g. computed from the weights): merging checks
    that both sides hold the same values and keeps them."""

    kind = "fixed"

    def __init__(self, **arrays):
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}

    @property
    def empty(self) -> bool:
        return not self.arrays

    def state(self) -> dict:
        return dict(self.arrays)

    def set_state(self, arrays) -> None:
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}

    def _merge_state(self, other) -> None:
        for k in sorted(set(self.arrays) | set(other.arrays)):
            a, b = self.arrays.get(k), other.arrays.get(k)
            if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                raise AnalysisError(f"cannot merge: {k} differs between the two states")


def save_states(path, accumulators: dict[str, Accumulator], metadata: dict | None = None) -> None:
    """Write named accumulators (and JSON metadata) to one safetensors file, atomically."""
    from safetensors.numpy import save_file

    from ..io.temporary import atomic_output
    from ..errors import OutputError

    tensors, kinds = {}, {}
    for name, acc in accumulators.items():
        if "/" in name:
            raise AnalysisError(f"accumulator names cannot contain '/': {name!r}")
        kinds[name] = {"kind": acc.kind, "settings": acc.settings()}
        for key, value in acc.state().items():
            tensors[f"{name}/{key}"] = np.array(value, order="C")  # ascontiguousarray makes 0-d 1-d
    meta = {"format": STATE_FORMAT, "format_version": STATE_VERSION,
            "accumulators": json.dumps(kinds), "metadata": json.dumps(metadata or {})}
    with atomic_output(path, OutputError) as tmp:
        save_file(tensors, tmp, metadata=meta)


def load_states(path) -> tuple[dict[str, Accumulator], dict]:
    """Read a file written by `save_states`: ({name: accumulator}, metadata)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise AnalysisError(f"{path} is not a readable analysis state file: {e}") from None
    if meta.get("format") != STATE_FORMAT:
        raise AnalysisError(f"{path} is not a vitops analysis state file (written by --save-state)")
    if meta.get("format_version") != STATE_VERSION:
        raise AnalysisError(f"{path}: analysis state format version {meta.get('format_version')!r} "
                            f"is not supported (this vitops reads {STATE_VERSION!r})")
    try:
        kinds = json.loads(meta["accumulators"])
        metadata = json.loads(meta.get("metadata", "{}"))
    except (KeyError, ValueError, RecursionError) as e:
        raise AnalysisError(f"{path}: unreadable analysis state metadata: {e}") from None
    out = {}
    for name, info in kinds.items():
        cls = _KINDS.get(info.get("kind"))
        if cls is None:
            raise AnalysisError(f"{path}: unknown accumulator kind {info.get('kind')!r} for {name!r}")
        prefix = f"{name}/"
        try:
            acc = cls.from_settings(info.get("settings", {}))
            acc.set_state({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        except (KeyError, TypeError, ValueError) as e:
            raise AnalysisError(f"{path}: {name!r} ({info.get('kind')}) cannot be read: "
                                f"{type(e).__name__}: {e}") from None
        out[name] = acc
    return out, metadata
