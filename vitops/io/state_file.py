"""The analysis state file: the accumulators of `vitops analyze --save-state`, in one safetensors
file, read as the hostile input it may be.

Layout: tensors "<accumulator>/<array>" (float64 sums, int64 positions, uint8 names, ...), and
in the metadata: format "vitops-analysis-state", format_version, "accumulators" (JSON: each
one's kind and settings) and "metadata" (JSON: what the caller adds, e.g. the study).

Reading goes through the bounded safetensors header reader (sizes, dtypes and byte ranges
checked against the file before any tensor is read) and the bounded JSON parser; every tensor
is read in its own dtype, so nothing read can be larger than the file. What the arrays mean is
checked by their readers (`vitops.analysis.accumulate`, `vitops.app.study`) before anything is
allocated from them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np

from ..errors import AnalysisError, OutputError
from .bounded_json import parse_object
from .safetensors_header import MAX_HEADER_BYTES, format_of, read_header, read_tensor
from .temporary import atomic_output

FORMAT = "vitops-analysis-state"
VERSION = "4"  # 2: names as JSON, accumulators named as in metrics.json; 3: token_mass; 4: explorer maps
SUPPORTED_VERSIONS = ("4",)


def is_state_file(path) -> bool:
    """Whether `path` is an analysis state file (its header says so): one vitops may replace."""
    return format_of(path) == FORMAT


def write_state(path, tensors: Mapping[str, np.ndarray], accumulators: Mapping, metadata: Mapping) -> None:
    """Write a state file atomically; an existing file at `path` is replaced only when it is a
    state file itself."""
    from safetensors.numpy import save_file

    meta = {
        "format": FORMAT,
        "format_version": VERSION,
        "accumulators": json.dumps(accumulators),
        "metadata": json.dumps(metadata),
    }
    with atomic_output(path, OutputError, is_state_file, "analysis state file") as tmp:
        save_file({k: np.array(v, order="C") for k, v in tensors.items()}, tmp, metadata=meta)


def read_state(path) -> tuple[dict[str, np.ndarray], dict, dict]:
    """(arrays by tensor name, accumulators {name: {"kind", "settings"}}, metadata), every part
    checked for its type; an AnalysisError naming the file and the problem otherwise."""
    try:
        header = read_header(path, AnalysisError)
    except AnalysisError as e:
        raise AnalysisError(f"cannot read the analysis state file: {e}") from None
    meta = header.metadata
    if meta.get("format") != FORMAT:
        raise AnalysisError(f"{path} is not a vitops analysis state file (written by --save-state)")
    if meta.get("format_version") not in SUPPORTED_VERSIONS:
        raise AnalysisError(
            f"{path}: analysis state format version {meta.get('format_version')!r} is not "
            f"one this vitops reads ({', '.join(SUPPORTED_VERSIONS)}): written by another version "
            "of vitops; analyse the images again with this one"
        )
    if "accumulators" not in meta:
        raise AnalysisError(f"{path}: no accumulators in its metadata")
    kinds = parse_object(meta["accumulators"], f"{path}: accumulators", AnalysisError, MAX_HEADER_BYTES)
    extra = parse_object(meta.get("metadata", "{}"), f"{path}: metadata", AnalysisError, MAX_HEADER_BYTES)
    for name, info in kinds.items():
        if not (
            isinstance(info, dict)
            and isinstance(info.get("kind"), str)
            and isinstance(info.get("settings", {}), dict)
        ):
            raise AnalysisError(
                f"{path}: accumulator {name[:80]!r} is not {{'kind': str, 'settings': {{...}}}}"
            )
    arrays = {k: read_tensor(path, t, AnalysisError, f"tensor {k[:80]!r}") for k, t in header.tensors.items()}
    return arrays, kinds, extra
