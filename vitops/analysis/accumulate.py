"""Accumulators: statistics over a data set that merge exactly.

Every accumulator keeps its state as numpy arrays on the host (sums in float64) and has
`update(...)`, `result()`, `merge(other)`, and `save(path)` / `load(path)`. Two accumulators fed
two halves of a data set merge into the one a single run over all of it would give (up to
float64 summation order), so shards computed by separate processes, devices or hosts combine.
Merging refuses another kind, or other settings, with an error naming the difference.

Files are safetensors (`vitops.io.state_file`): the arrays under "<name>/<array>", and in the
metadata the kind and the settings of each accumulator (JSON), plus whatever the caller adds.
A file read back is outside input: settings and arrays are checked before they are used.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..errors import AnalysisError, clip
from ..io.state_file import read_state, write_state

_KINDS: dict[str, type] = {}


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

    def _merge_state(self, other: Accumulator) -> None:
        raise NotImplementedError

    @property
    def empty(self) -> bool:
        raise NotImplementedError

    # ---- shared ----
    def merge(self, other: Accumulator) -> Accumulator:
        """Fold `other` into this accumulator (in place); returns self."""
        if type(other) is not type(self):
            raise AnalysisError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
        differ = settings_difference(self.settings(), other.settings())
        if differ:
            raise AnalysisError(
                f"cannot merge {type(self).__name__} states with different settings: {differ}"
            )
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
    def load(cls, path) -> Accumulator:
        states, _ = load_states(path)
        if len(states) != 1:
            raise AnalysisError(f"{path} holds {len(states)} accumulators, not one: use load_states")
        (acc,) = states.values()
        if cls is not Accumulator and not isinstance(acc, cls):
            raise AnalysisError(f"{path} holds a {type(acc).__name__}, not a {cls.__name__}")
        return acc

    @classmethod
    def from_settings(cls, settings: dict) -> Accumulator:
        """An empty accumulator with these settings (read back from a file: checked)."""
        try:
            return cls(**settings)
        except TypeError:
            raise AnalysisError(f"settings {clip(sorted(settings))} do not fit a {cls.__name__}") from None


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
        self.shape = None if shape is None else setting_shape(shape, "shape")
        bad = [k for k, v in labels.items() if not (isinstance(v, str) and len(v) <= 200)]
        if bad:
            raise AnalysisError(f"Moments labels must be short strings: {clip(bad)}")
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
        count = state_count(arrays)
        if count:
            shape = self.shape if self.shape is not None else (None,) * np.ndim(arrays.get("mean", 0))
            self._mean = state_array(arrays, "mean", "f", shape).astype(np.float64)
            self._m2 = state_array(arrays, "m2", "f", self._mean.shape).astype(np.float64)
            self.shape = self._mean.shape
        self.count = count

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

    @classmethod
    def from_settings(cls, settings: dict) -> Fixed:
        if settings:
            raise AnalysisError(f"a fixed state has no settings, got {clip(sorted(settings))}")
        return cls()

    def _merge_state(self, other) -> None:
        for k in sorted(set(self.arrays) | set(other.arrays)):
            a, b = self.arrays.get(k), other.arrays.get(k)
            if a is None or b is None or a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                raise AnalysisError(f"cannot merge: {k} differs between the two states")


def save_states(path, accumulators: dict[str, Accumulator], metadata: dict | None = None) -> None:
    """Write named accumulators (and JSON metadata) to one state file, atomically
    (`vitops.io.state_file`); an existing file there is replaced only when it is a state file."""
    tensors, kinds = {}, {}
    for name, acc in accumulators.items():
        if "/" in name:
            raise AnalysisError(f"accumulator names cannot contain '/': {name!r}")
        kinds[name] = {"kind": acc.kind, "settings": acc.settings()}
        for key, value in acc.state().items():
            tensors[f"{name}/{key}"] = np.asarray(value)
    write_state(path, tensors, kinds, metadata or {})


def load_states(path) -> tuple[dict[str, Accumulator], dict]:
    """Read a file written by `save_states`: ({name: accumulator}, metadata). The file is
    outside input: its header, JSON and every array are checked (`vitops.io.state_file`, then
    each accumulator's settings and `set_state`); every problem is an AnalysisError naming it."""
    arrays, kinds, metadata = read_state(path)
    out = {}
    for name, info in kinds.items():
        cls = _KINDS.get(info["kind"])
        if cls is None:
            raise AnalysisError(f"{path}: unknown accumulator kind {clip(info['kind'])} for {clip(name)}")
        prefix = f"{name}/"
        try:
            acc = cls.from_settings(info.get("settings", {}))
            acc.set_state({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
        except AnalysisError as e:
            raise AnalysisError(f"{path}: {clip(name)} ({info['kind']}): {e}") from None
        out[name] = acc
    return out, metadata


# ---- checking what a state file holds ----


def state_array(arrays, key: str, kinds: str, shape=None, ndim: int | None = None) -> np.ndarray:
    """arrays[key], checked: present, of a dtype kind in `kinds` ("f" float, "i" int, "u"
    unsigned), of `shape` (None entries match any size) or rank `ndim`. AnalysisError otherwise."""
    if key not in arrays:
        raise AnalysisError(f"the state lacks its {key!r} array")
    a = np.asarray(arrays[key])
    if a.dtype.kind not in kinds:
        raise AnalysisError(f"its {key!r} array has dtype {a.dtype}, expected {' or '.join(kinds)}")
    if shape is not None:
        shape = tuple(shape)
        if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise AnalysisError(f"its {key!r} array has shape {a.shape}, expected {want}")
    elif ndim is not None and a.ndim != ndim:
        raise AnalysisError(f"its {key!r} array has shape {a.shape}, expected rank {ndim}")
    return a


def state_count(arrays, key: str = "count") -> int:
    """A count stored as one integer (a 0-d array, or shape (1,)), >= 0."""
    a = state_array(arrays, key, "iu")
    if a.size != 1 or int(a.reshape(-1)[0]) < 0:
        raise AnalysisError(f"its {key!r} must be one integer >= 0, got shape {a.shape}")
    return int(a.reshape(-1)[0])


def setting_int(settings: dict, key: str, low: int, high: int, optional: bool = False) -> int | None:
    """settings[key] as an int in [low, high] (None allowed when optional); AnalysisError otherwise."""
    value = settings.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AnalysisError(f"setting {key} must be an integer in [{low}, {high}], got {clip(value)}")
    return value


def setting_shape(value, key: str, max_rank: int = 8, max_side: int = 1 << 20) -> tuple[int, ...]:
    """A list of at most max_rank sizes in [0, max_side] as a tuple; AnalysisError otherwise."""
    if not (
        isinstance(value, (list, tuple))
        and len(value) <= max_rank
        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= max_side for v in value)
    ):
        raise AnalysisError(f"setting {key} must be a list of at most {max_rank} sizes, got {clip(value)}")
    return tuple(value)
