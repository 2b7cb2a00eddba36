"""vitops' errors: one base class, one subclass per concern.

Every reader of outside input (weight files, checkpoints, configs, images, downloads, saved
analysis states) raises one of these, with a message that names the file and the problem. The
CLI turns each into one line and exit code 2; anything else is an internal error.
The subclasses keep the builtin base callers already catch (ValueError, RuntimeError).
"""

from __future__ import annotations

import errno
import reprlib


class VitopsError(Exception):
    """Base class of every error vitops raises on purpose."""


class ConfigError(VitopsError, ValueError):
    """An architecture config that is not a valid ViT (wrong type, out of range, unknown field)."""


class WeightFileError(VitopsError, ValueError):
    """A weight file that cannot be read, or whose tensors do not fit its config."""


class ConversionError(VitopsError, ValueError):
    """A checkpoint that cannot be converted; the message names what is wrong."""


class HubError(VitopsError, RuntimeError):
    """A download, checksum or cache problem; the message says what and where."""


class ImageError(VitopsError, ValueError):
    """An image that cannot be read or used; the message names it."""


class AnalysisError(VitopsError, ValueError):
    """Analysis input or state that cannot be used: incompatible states to merge, bad settings."""


class OutputError(VitopsError, OSError):
    """An output (a report folder) that cannot be written."""


class BackendError(VitopsError, RuntimeError):
    """No usable Keras backend, or an option the active backend does not support."""


# Messages name what is wrong, but a hostile input can hold millions of bad entries (a config
# claiming a million blocks, a header with 10^5 tensors): a message lists a few and counts
# the rest, so it stays readable and small.
SHOWN_ITEMS = 12
SHOWN_CHARS = 80  # a value shown in a message
SHOWN_ITEM_CHARS = 300  # one item of a list of problems


def capped(items, shown: int = SHOWN_ITEMS, sep: str = ", ") -> str:
    """'a, b, c and 12,000 more': the first `shown` items (each clipped), then a count."""
    items = list(items) if not isinstance(items, (list, tuple)) else items
    head = [clip(i) if not isinstance(i, str) else clip_text(i, SHOWN_ITEM_CHARS) for i in items[:shown]]
    rest = len(items) - len(head)
    return sep.join(head) + (f" and {rest:,} more" if rest > 0 else "")


def clip_text(text: str, limit: int = SHOWN_CHARS) -> str:
    """text, cut to `limit` characters with an ellipsis and the full length when longer."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def clip(value, limit: int = SHOWN_CHARS) -> str:
    """repr(value), cut to `limit` characters; bounded work on deeply nested or huge values
    (reprlib stops at a few levels and items; ints too long to print are named, not printed)."""
    short = reprlib.Repr()  # attributes, not keywords: Python 3.10 and 3.11 take none
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 3, 6, 6, 4, 4
    short.maxstring, short.maxlong, short.maxother = limit, 40, limit
    try:
        text = short.repr(value)
    except (RecursionError, ValueError):  # an int beyond Python's digit limit
        text = f"<{type(value).__name__}>"
    return clip_text(text, limit)


def os_reason(error: OSError) -> str:
    """A short, accurate reason for a failed file operation ('permission denied', not the
    'no such file' a failed existence test would suggest)."""
    reasons = {
        errno.ENOENT: "no such file or directory",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EISDIR: "is a directory",
        errno.ENOTDIR: "a parent is not a directory",
        errno.ENOSPC: "no space left on device",
        errno.EROFS: "read-only file system",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large",
        errno.ENAMETOOLONG: "file name too long",
        errno.ELOOP: "too many levels of symbolic links",
    }
    return reasons.get(error.errno, error.strerror or str(error))


# The error classes: what `from vitops.errors import *` and `vitops` itself export.
ERRORS = tuple(c.__name__ for c in VitopsError.__subclasses__())
__all__ = ["VitopsError", *ERRORS]
