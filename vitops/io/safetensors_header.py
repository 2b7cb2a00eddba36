"""A safetensors file's header, read and checked before any tensor is: names, dtypes, shapes,
byte ranges and metadata.

Layout (huggingface/safetensors, docs "Format"): 8 bytes little-endian header length N, N bytes
of JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
then the data; offsets are relative to the data, and the tensors tile it exactly.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ..errors import capped, clip, os_reason
from .bounded_json import parse_object

# Bytes per element of every dtype the format defines.
ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
# A vitops header is ~100 KB (ViT-H: 400 tensors, plus 21k class names ~1 MB); timm's are
# smaller. The format itself allows 100 MB, enough JSON to take gigabytes once parsed.
MAX_HEADER_BYTES = 16 << 20
_MAX_RANK = 8


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte offset in the file
    end: int


@dataclass(frozen=True)
class Header:
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]


def _corrupt(path, error, detail):
    return error(f"{path} is not a readable safetensors file (truncated or corrupt?): {detail}")


def read_header(path, error: type[Exception]) -> Header:
    """Read and check the header of safetensors file `path`; problems raise `error` naming it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise _corrupt(path, error, f"{size} bytes, shorter than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise _corrupt(
                    path, error, f"header length {n:,} exceeds the {MAX_HEADER_BYTES:,} bytes vitops reads"
                )
            if n > size - 8:
                raise _corrupt(
                    path, error, f"header length {n:,} runs past the end of the {size:,}-byte file"
                )
            text = f.read(n)
    except IsADirectoryError:
        raise error(f"{path} is a directory, not a weight file") from None
    except OSError as e:
        raise error(f"cannot read {path}: {os_reason(e)}") from None
    try:
        d = parse_object(text, "its header", error, max_chars=MAX_HEADER_BYTES)
    except error as e:
        raise _corrupt(path, error, str(e)) from None
    meta = d.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _corrupt(path, error, "__metadata__ is not a string-to-string map")
    data_start, tensors, problems = 8 + n, {}, []
    for name, entry in d.items():
        info = _tensor_info(entry)
        if isinstance(info, str):
            problems.append(f"{name}: {info}")
        else:
            tensors[name] = TensorInfo(info[0], info[1], data_start + info[2], data_start + info[3])
    if problems:
        raise _corrupt(path, error, capped(problems, 6, "; "))
    # The tensors must tile the data exactly, in offset order (what safetensors itself checks).
    position = data_start
    for name, t in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if t.begin != position:
            raise _corrupt(
                path,
                error,
                f"tensor {clip(name)} starts at byte {t.begin - data_start:,} of the "
                f"data, expected {position - data_start:,} (overlapping or missing bytes)",
            )
        position = t.end
    if position != size:
        raise _corrupt(
            path,
            error,
            f"the tensors cover {position - data_start:,} bytes of data, "
            f"the file holds {size - data_start:,}",
        )
    return Header(meta, tensors)


def _tensor_info(entry):
    """(dtype, shape, begin, end) of one header entry, or a string saying what is wrong."""
    if not isinstance(entry, dict):
        return f"entry is {type(entry).__name__}, not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        return f"unknown dtype {clip(dtype)}"
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_RANK
        or not all(type(s) is int and 0 <= s < 1 << 40 for s in shape)
    ):
        return f"shape {clip(shape)} is not a list of at most {_MAX_RANK} sizes"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and 0 <= o < 1 << 50 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        return f"data_offsets {clip(offsets)} are not [begin, end] byte offsets"
    nbytes = math.prod(shape) * ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != nbytes:
        return (
            f"shape {shape} of {dtype} needs {nbytes:,} bytes, data_offsets give {offsets[1] - offsets[0]:,}"
        )
    return dtype, tuple(shape), offsets[0], offsets[1]


# numpy's type per dtype as stored: every dtype vitops reads. bfloat16 (no numpy type) is read
# as its 16 bits.
_NUMPY = {"F16": "<f2", "BF16": "<u2", "F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "U8": "u1"}
# What vitops' own state files hold: read exactly, no cast.
EXACT_DTYPES = ("F64", "F32", "F16", "I64", "I32", "U8")


def read_tensor(path, info: TensorInfo, error: type[Exception], name: str = "tensor", dtypes=EXACT_DTYPES):
    """One tensor of a checked header, of one of `dtypes`, read from the file (not mapped) in its
    shape and stored dtype: at most the bytes the header's checked byte range covers."""
    import numpy as np

    if info.dtype not in dtypes:
        raise error(f"{path}: {name} has dtype {info.dtype}; expected one of {', '.join(dtypes)}")
    count = math.prod(info.shape)
    try:
        raw = np.fromfile(path, dtype=_NUMPY[info.dtype], count=count, offset=info.begin)
    except OSError as e:
        raise error(f"{path}: cannot read {name}: {os_reason(e)}") from None
    if raw.size != count:
        raise error(f"{path}: {name} is cut short (the file changed while open?)")
    return raw.reshape(info.shape)


def read_float32(path, info: TensorInfo, error: type[Exception], name: str = "tensor"):
    """One floating-point tensor of a checked header, read from the file (not mapped) as
    float32 in its shape."""
    import numpy as np

    raw = read_tensor(path, info, error, name, FLOAT_DTYPES)
    if info.dtype == "BF16":  # bfloat16 is the top half of a float32: exact
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


class _NotOurs(Exception):
    pass


def format_of(path) -> str | None:
    """The "format" a safetensors file's metadata states ("vitops", "vitops-analysis-state"), or
    None for anything else (another file, unreadable, no such metadata). For deciding whether an
    existing file is one vitops wrote, and so may be replaced."""
    try:
        if not os.path.isfile(path) or os.path.islink(path):
            return None
        value = read_header(path, _NotOurs).metadata.get("format")
    except _NotOurs:
        return None
    return value if isinstance(value, str) else None
