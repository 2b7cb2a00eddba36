"""JSON from outside (weight-file metadata, Hugging Face configs, registries, cache records),
parsed within bounds.

The standard parser recurses once per nesting level (a deeply nested document raises
RecursionError, which is not a ValueError), turns 1e999 into inf, accepts the NaN and Infinity
literals, and returns whatever the top level is. `parse_object` refuses all of these, and
text beyond a size limit, raising the caller's error class with the source named.
"""

from __future__ import annotations

import json
import math
import os

from ..errors import clip_text, os_reason

# No document vitops reads nests deeper than 3 levels (registry -> models -> entry -> source).
MAX_DEPTH = 16


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {clip_text(text, 40)} is out of the float range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _depth(value) -> int:
    """Nesting depth of a parsed document, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def parse_object(text, source: str, error: type[Exception], max_chars: int = 1 << 20, top: type = dict):
    """Parse `text` (str or bytes) as a JSON object (or the `top` type, e.g. list), or raise
    `error` naming `source`.

    Refused: text longer than max_chars, invalid UTF-8 or JSON, nesting deeper than MAX_DEPTH,
    non-finite numbers, and a top level of another type.
    """
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_chars:
            raise error(f"{source}: {len(text):,} bytes of JSON, more than the {max_chars:,} allowed")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise error(f"{source}: not UTF-8 text: {e}") from None
    if not isinstance(text, str):
        raise error(f"{source}: expected JSON text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise error(f"{source}: {len(text):,} characters of JSON, more than the {max_chars:,} allowed")
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, non-finite numbers, ints beyond the digit limit
        raise error(f"{source}: not valid JSON: {clip_text(str(e), 200)}") from None
    if not isinstance(value, top):
        expected = "an object" if top is dict else f"a {top.__name__}"
        raise error(f"{source}: expected {expected} at the top level, got {type(value).__name__}")
    if _depth(value) > MAX_DEPTH:
        raise error(f"{source}: JSON nested deeper than {MAX_DEPTH} levels")
    return value


def read_limited(path, max_bytes: int, error: type[Exception], what: str = "") -> bytes:
    """The bytes of file `path`, refused (with `error`, naming `what` or the path) when it holds
    more than max_bytes: reading stops at the limit, whatever the file's size."""
    where = what or os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {where}: {os_reason(e)}") from None
    if len(data) > max_bytes:
        raise error(f"{where}: more than the {max_bytes:,} bytes vitops reads from it")
    return data


def parse_file(path, error: type[Exception], max_bytes: int = 1 << 20, what: str = "", top: type = dict):
    """A JSON file, read within max_bytes and parsed by `parse_object`."""
    where = what or os.fspath(path)
    return parse_object(read_limited(path, max_bytes, error, where), where, error, max_bytes, top)
