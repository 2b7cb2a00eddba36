"""The vitops weight file: one .safetensors with vitops keys, forward-ready layouts, and the
config plus provenance in its metadata. A model loads from this file alone.

Metadata (safetensors' string-to-string map):
  format          "vitops"
  format_version  "1"
  config          the ViTConfig as JSON
  labels          optional: class names as a JSON list of strings, index = class
  preprocessing   optional: a Preprocessing as JSON (see vitops.preprocess)
  source_format, source_file, source_sha256, ...   provenance, free text

Writes are atomic (a temporary file beside the destination, then a rename; see vitops.io.temporary), so a
failed or interrupted save never leaves a partial file. Reads are strict and bounded: the
header is checked (size, dtypes, byte ranges, config, labels, preprocessing) and every
missing, unexpected or misshapen tensor is named in one error before any tensor is read; each
tensor is checked for non-finite or absurd values as it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import save_file

from ..core.config import ViTConfig
from ..core.vit import param_shapes
from ..errors import ConfigError, WeightFileError, capped, clip, os_reason
from ..preprocess import Preprocessing
from .bounded_json import parse_object
from .safetensors_header import MAX_HEADER_BYTES, format_of, read_float32, read_header
from .temporary import atomic_output

FORMAT = "vitops"
FORMAT_VERSION = "1"
SUPPORTED_FORMAT_VERSIONS = ("1",)
# Stored as float32 by `save`; half precision reads too (cast to float32). Integer and bool
# tensors are never weights of a ViT: refused, not cast.
LOADABLE_DTYPES = ("F32", "F16", "BF16")
# Trained ViT weights are O(1) (LayerNorm scales and biases, embeddings, kernels); a value
# beyond 1e6 in magnitude is corruption (a flipped exponent bit), and in float32 it would
# overflow the activations to inf a few layers on.
MAX_ABS_WEIGHT = 1e6
MAX_LABEL_CHARS = 1000  # ImageNet-21k's longest WordNet lemma list is ~200
RESERVED_KEYS = ("format", "format_version", "config")


def shape_problems(found: Mapping[str, tuple], expected: Mapping[str, tuple]) -> list[str]:
    """Every missing, unexpected or misshapen key, as readable lines (long lists capped)."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshapen = [
        f"{k}: expected {tuple(expected[k])}, found {tuple(found[k])}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {capped(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {capped(unexpected)}")
    if misshapen:
        problems.append(f"misshapen {len(misshapen)} tensor(s): {capped(misshapen, sep='; ')}")
    return problems


def value_problem(key: str, array: np.ndarray) -> str | None:
    """Why a tensor's values cannot be weights (NaN, inf, beyond MAX_ABS_WEIGHT), or None."""
    if array.size == 0:
        return None
    lo, hi = float(np.min(array)), float(np.max(array))  # NaN propagates through min/max
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"tensor {key} holds NaN or infinite values"
    if max(-lo, hi) > MAX_ABS_WEIGHT:
        return f"tensor {key} holds {lo if -lo > hi else hi:.3g}, beyond +-{MAX_ABS_WEIGHT:g} (corrupt?)"
    return None


def is_weight_file(path) -> bool:
    """Whether `path` is a vitops weight file (its header says format "vitops")."""
    return format_of(path) == FORMAT


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_labels(metadata: Mapping[str, str]) -> list[str] | None:
    """The class names a weight file carries (metadata "labels"), or None.

    The format is a JSON list of strings, index = class ("tench, Tinca tinca" has commas).
    Malformed labels raise WeightFileError.
    """
    text = metadata.get("labels")
    if text is None:
        return None
    if not isinstance(text, str):
        raise WeightFileError(f"metadata labels must be text, got {type(text).__name__}")
    labels = parse_object(text, "metadata labels", WeightFileError, MAX_HEADER_BYTES, top=list)
    if not all(isinstance(s, str) for s in labels):
        raise WeightFileError("metadata labels must be a JSON list of strings")
    long = [i for i, s in enumerate(labels) if len(s) > MAX_LABEL_CHARS]
    if long:
        raise WeightFileError(
            f"metadata labels: class name(s) {capped(long)} longer than {MAX_LABEL_CHARS} characters"
        )
    return labels


def metadata_problems(metadata: Mapping[str, str], config: ViTConfig) -> list[str]:
    """Problems of the optional metadata (labels, preprocessing) given the model's config."""
    problems = []
    try:
        labels = read_labels(metadata)
        if labels is not None and len(labels) != config.num_classes:
            problems.append(f"{len(labels)} labels for {config.num_classes} classes")
    except WeightFileError as e:
        problems.append(str(e))
    if "preprocessing" in metadata:
        try:
            size = Preprocessing.for_model(config, metadata).size
            if any(s % config.patch_size for s in size):
                problems.append(
                    f"preprocessing size {list(size)} is not a multiple of the patch size "
                    f"{config.patch_size}: the model could not take its images"
                )
        except ConfigError as e:
            problems.append(str(e))
    return problems


def file_metadata(
    config: ViTConfig,
    provenance: Mapping[str, str] | None = None,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    error: type[Exception] = WeightFileError,
) -> dict[str, str]:
    """The metadata of a vitops file: provenance (free text, but not the keys vitops owns), then
    format, version and config, class names and preprocessing as JSON. `write` checks the rest."""
    metadata = {str(k): str(v) for k, v in (provenance or {}).items()}
    reserved = sorted(set(metadata) & set(RESERVED_KEYS))
    if reserved:
        raise error(f"provenance may not set {reserved}: vitops writes them")
    metadata.update({"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json()})
    if labels is not None:
        metadata["labels"] = json.dumps(list(labels), ensure_ascii=False)
    if preprocessing is not None:
        metadata["preprocessing"] = preprocessing.to_json()
    return metadata


def write(
    path,
    params: Mapping[str, np.ndarray],
    config: ViTConfig,
    metadata: Mapping[str, str],
    error: type[Exception] = WeightFileError,
    name=None,
) -> None:
    """Check everything, then write a vitops file at `path` as it is (not atomically: for a
    path that is already a temporary; `save` is the atomic one). metadata: `file_metadata`'s.
    Problems raise `error` naming `name` (default: path)."""
    name = name or path
    found = {k: tuple(np.shape(v)) for k, v in params.items()}
    problems = shape_problems(found, param_shapes(config))
    if problems:
        raise error(f"refusing to write {name}: tensors do not fit the config: " + "; ".join(problems))
    tensors = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
    bad = [p for k, v in tensors.items() if (p := value_problem(k, v))]
    if bad:
        raise error(f"refusing to write {name}: {capped(bad, 6, '; ')}")
    problems = metadata_problems(metadata, config)
    if problems:
        raise error(f"refusing to write {name}: " + "; ".join(problems))
    try:
        save_file(tensors, os.fspath(path), metadata=dict(metadata))
    except (OSError, SafetensorError) as e:
        raise error(f"cannot write {name}: {_write_reason(e)}") from None


def _write_reason(e: Exception) -> str:
    """An OSError's reason; safetensors' Rust errors carry the errno as "(os error N)"."""
    if isinstance(e, OSError):
        return os_reason(e)
    m = re.search(r"\(os error (\d+)\)", str(e))
    return os_reason(OSError(int(m.group(1)), os.strerror(int(m.group(1))))) if m else str(e)


def save(
    path,
    params: Mapping[str, np.ndarray],
    config: ViTConfig,
    provenance: Mapping[str, str] | None = None,
    *,
    labels: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
) -> None:
    """Write params (vitops keys, forward layouts) and config to a vitops file, atomically.

    labels (class names, index = class) and preprocessing travel in the metadata. Everything
    is checked first (shapes, values, metadata): on any problem nothing is written and
    WeightFileError says why; OS errors (a full disk) are WeightFileErrors naming `path`.
    """
    metadata = file_metadata(config, provenance, labels, preprocessing)
    with atomic_output(path, WeightFileError, is_weight_file, "vitops weight file") as tmp:
        write(tmp, params, config, metadata, name=path)


class WeightFile:
    """An open vitops file: config and metadata from the header; tensors read one at a time.

    Use as a context manager. `WeightFile(path)[key]` reads that tensor (one copy, float32),
    so a loader can turn tensors into backend variables one by one without holding the whole
    file twice. Opening checks the whole header; every problem is a WeightFileError naming
    the file.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            os.stat(self.path)
        except FileNotFoundError:
            raise WeightFileError(f"no such weight file: {self.path}") from None
        except OSError as e:  # permission denied on a parent folder is not "no such file"
            raise WeightFileError(f"cannot read {self.path}: {os_reason(e)}") from None
        header = read_header(self.path, WeightFileError)
        self.metadata = dict(header.metadata)
        self._tensors = header.tensors
        self.shapes = {k: t.shape for k, t in header.tensors.items()}
        if self.metadata.get("format") != FORMAT:
            raise WeightFileError(
                f"{self.path} is a safetensors file but not a vitops weight file (its metadata has "
                f"no format={FORMAT!r}); convert it first: vitops convert {self.path} OUT.safetensors"
            )
        version = self.metadata.get("format_version")
        if version not in SUPPORTED_FORMAT_VERSIONS:
            raise WeightFileError(
                f"{self.path}: format_version {clip(version)} is not one this vitops "
                f"reads ({', '.join(SUPPORTED_FORMAT_VERSIONS)}); a newer vitops wrote it?"
            )
        if "config" not in self.metadata:
            raise WeightFileError(f"{self.path}: no config in its metadata")
        try:
            self.config = ViTConfig.from_json(self.metadata["config"], "config")
        except ConfigError as e:
            raise WeightFileError(f"{self.path}: bad config in metadata: {e}") from None
        bad_types = [f"{k} ({t.dtype})" for k, t in header.tensors.items() if t.dtype not in LOADABLE_DTYPES]
        if bad_types:
            raise WeightFileError(
                f"{self.path}: tensors must be floating point "
                f"({', '.join(LOADABLE_DTYPES)}); found {capped(bad_types)}"
            )
        problems = shape_problems(self.shapes, param_shapes(self.config))
        if problems:
            raise WeightFileError(
                f"{self.path} does not match its config ({self.config.name or 'unnamed'}): "
                + "; ".join(problems)
            )
        problems = metadata_problems(self.metadata, self.config)
        if problems:
            raise WeightFileError(f"{self.path}: bad metadata: " + "; ".join(problems))

    @property
    def labels(self) -> list[str] | None:
        """The class names the file carries, or None."""
        return read_labels(self.metadata)

    def __getitem__(self, key: str) -> np.ndarray:
        """One tensor as float32, read from the file (not mapped), its values checked."""
        if key not in self._tensors:
            raise KeyError(key)
        array = read_float32(self.path, self._tensors[key], WeightFileError, f"tensor {key}")
        problem = value_problem(key, array)
        if problem:
            raise WeightFileError(f"{self.path}: {problem}")
        return array

    def keys(self) -> Iterator[str]:
        return iter(self.shapes)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None  # nothing is held open: each tensor is read with its own open


def load_params(path) -> tuple[dict[str, np.ndarray], ViTConfig]:
    """Read a vitops file into (params as numpy arrays, config), strictly checked."""
    with WeightFile(path) as f:
        return {k: f[k] for k in f.shapes}, f.config


__all__ = [
    "WeightFile",
    "WeightFileError",
    "load_params",
    "save",
    "write",
    "read_labels",
    "sha256_file",
    "shape_problems",
    "value_problem",
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_ABS_WEIGHT",
]
