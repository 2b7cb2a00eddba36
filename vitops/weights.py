"""The vitops weight file: one .safetensors with vitops keys, forward-ready layouts, and the
config plus provenance in its metadata. A model loads from this file alone.

Writes are atomic (temporary file in the destination directory, then os.replace), so a failed
or interrupted save never leaves a partial file. Reads are strict: every missing, unexpected
or misshapen tensor is named in one error, before any tensor is read.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from .config import ViTConfig
from .errors import WeightFileError
from .vit import param_shapes

FORMAT = "vitops"
FORMAT_VERSION = "1"


def shape_problems(found: Mapping[str, tuple], expected: Mapping[str, tuple]) -> list[str]:
    """Every missing, unexpected or misshapen key, as readable lines."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshapen = [f"{k}: expected {tuple(expected[k])}, found {tuple(found[k])}"
                 for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected)}")
    if misshapen:
        problems.append(f"misshapen {len(misshapen)} tensor(s): {'; '.join(misshapen)}")
    return problems


def sha256_file(path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path, write) -> None:
    """Call write(tmp_path), then move tmp_path onto path; remove it on any failure."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved file gets the usual mode
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(path, params: Mapping[str, np.ndarray], config: ViTConfig,
         provenance: Mapping[str, str] | None = None) -> None:
    """Write params (vitops keys, forward layouts) and config to a vitops file, atomically."""
    found = {k: tuple(np.shape(v)) for k, v in params.items()}
    problems = shape_problems(found, param_shapes(config))
    if problems:
        raise WeightFileError(f"refusing to write {path}: tensors do not fit the config: "
                              + "; ".join(problems))
    tensors = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_json()}
    metadata.update({str(k): str(v) for k, v in (provenance or {}).items()})
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


class WeightFile:
    """An open vitops file: config and metadata from the header; tensors read one at a time.

    Use as a context manager. `WeightFile(path)[key]` reads that tensor through safetensors'
    numpy interface (one copy, out of the memory map), so a loader can turn tensors into
    backend variables one by one without holding the whole file twice.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise WeightFileError(f"no such weight file: {self.path}")
        try:
            with safe_open(self.path, framework="numpy") as f:
                self.metadata = dict(f.metadata() or {})
                self.shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightFileError(f"{self.path} is not a readable safetensors file "
                                  f"(truncated or corrupt?): {e}") from None
        if self.metadata.get("format") != FORMAT:
            raise WeightFileError(
                f"{self.path} is a safetensors file but not a vitops weight file (its metadata has "
                f"no format={FORMAT!r}); convert it first: vitops convert {self.path} OUT.safetensors")
        try:
            self.config = ViTConfig.from_json(self.metadata["config"])
        except (KeyError, ValueError, TypeError) as e:
            raise WeightFileError(f"{self.path}: bad config in metadata: {e}") from None
        problems = shape_problems(self.shapes, param_shapes(self.config))
        if problems:
            raise WeightFileError(f"{self.path} does not match its config ({self.config.name or 'unnamed'}): "
                                  + "; ".join(problems))

    def __getitem__(self, key: str) -> np.ndarray:
        # A handle of its own per tensor: the pages it maps leave the resident set when it
        # closes, so loading never holds the mapped file and the variables at the same time.
        if key not in self.shapes:
            raise KeyError(key)
        try:
            with safe_open(self.path, framework="numpy") as f:
                return f.get_tensor(key)
        except SafetensorError as e:
            raise WeightFileError(f"{self.path}: cannot read tensor {key}: {e}") from None

    def keys(self) -> Iterator[str]:
        return iter(self.shapes)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_params(path) -> tuple[dict[str, np.ndarray], ViTConfig]:
    """Read a vitops file into (params as numpy arrays, config), strictly checked."""
    with WeightFile(path) as f:
        return {k: f[k] for k in f.keys()}, f.config
