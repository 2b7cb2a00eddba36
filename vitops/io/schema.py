"""Types of JSON values from outside, checked before a value is used.

Every field of a weight file's metadata, a state file, a registry or cache entry, a Hugging Face
config or a label file can hold any JSON type: a list where a name belongs, 10**200 where a
float belongs, a dict where an int belongs. Each reader states what it expects with these
functions, which return the value when it fits and raise the reader's error class (naming the
field as `where` and the value, clipped) when it does not, so no check ever computes with a
value of the wrong type.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

from ..errors import clip


def _is_int(value) -> bool:
    # JSON true/false parse as bool, a subclass of int: never a count or a size
    return isinstance(value, int) and not isinstance(value, bool)


def finite(value) -> bool:
    """A finite real number, bools excluded (a JSON integer beyond the float range is not
    finite here, rather than an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def integer(value, where: str, error: type[Exception], low: int, high: int) -> int:
    """An int in [low, high]."""
    if not _is_int(value) or not low <= value <= high:
        raise error(f"{where} must be an integer in [{low:,}, {high:,}], got {clip(value)}")
    return value


def number(
    value, where: str, error: type[Exception], low: float = -math.inf, high: float = math.inf
) -> float:
    """A finite real number in [low, high], as a float (a JSON integer too large for a float is
    refused, not an OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{where} must be a number, got {clip(value)} ({type(value).__name__})")
    try:
        x = float(value)
    except OverflowError:
        raise error(f"{where} is out of the float range: {clip(value)}") from None
    if not (math.isfinite(x) and low <= x <= high):
        raise error(f"{where} must be a finite number in [{low:g}, {high:g}], got {clip(value)}")
    return x


def text(value, where: str, error: type[Exception], max_chars: int, optional: bool = False) -> str | None:
    """A string of at most max_chars characters (None too, when optional)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise error(f"{where} must be a string of at most {max_chars:,} characters, got {clip(value)}")
    return value


def flag(value, where: str, error: type[Exception]) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        raise error(f"{where} must be true or false, got {clip(value)}")
    return value


def listing(value, where: str, error: type[Exception], max_items: int) -> list:
    """A list of at most max_items items (their types are the caller's to check)."""
    if not isinstance(value, list) or len(value) > max_items:
        raise error(f"{where} must be a list of at most {max_items:,} items, got {clip(value)}")
    return value


def texts(value, where: str, error: type[Exception], max_items: int, max_chars: int) -> list[str]:
    """A list of strings, each of at most max_chars characters."""
    items = listing(value, where, error, max_items)
    for i, item in enumerate(items):
        text(item, f"{where}[{i}]", error, max_chars)
    return items


def mapping(
    value,
    where: str,
    error: type[Exception],
    required: Iterable[str] = (),
    optional: Iterable[str] | None = None,
) -> dict:
    """An object holding every `required` key; with `optional` given (not None: () for none),
    no keys but the required and optional ones."""
    if not isinstance(value, dict):
        raise error(f"{where} must be an object, got {clip(value)} ({type(value).__name__})")
    required = list(required)
    missing = [k for k in required if k not in value]
    if missing:
        raise error(f"{where} lacks {', '.join(missing)}")
    if optional is not None:
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            raise error(f"{where} has unknown fields {clip(unknown)}")
    return value
