"""File names made from data (model labels, image names, units), and the check that a path built
from one stays inside its folder.

A label read from a state file or a weight file is outside input: '../../x' or '/etc/x' or a
name with a NUL byte must not decide where vitops writes. `safe_name` keeps letters, digits,
'-', '_' and '.', replaces everything else, and never returns '', '.', '..' or a hidden name;
`inside` joins a name to a folder and refuses the result unless it lies inside it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import OutputError, clip

# Well under the 255 bytes most file systems allow, leaving room for suffixes ("_rollout.npy").
MAX_NAME_CHARS = 100


def safe_name(text, fallback: str = "item", max_chars: int = MAX_NAME_CHARS) -> str:
    """`text` as a file name: characters other than letters, digits, '-', '_' and '.' become
    '_' (path separators, control characters, undecodable bytes included), a leading '.' too
    (no hidden names, no '..'), cut to max_chars. `fallback` when nothing is left."""
    text = str(text)
    name = "".join(c if (c.isalnum() and c.isascii()) or c in "-_." else "_" for c in text[:max_chars])
    if name.startswith("."):
        name = "_" + name[1:]
    return name if name.strip("_") else fallback


def display_name(text: str) -> str:
    """A name from the file system as printable text: bytes that are not UTF-8 (which Python
    carries as surrogates) as \\xNN, control characters (a newline in a file name) as escapes."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def inside(folder, name: str) -> Path:
    """folder / name, after checking that it stays inside folder (symlinks resolved): an
    OutputError otherwise."""
    root = Path(os.path.realpath(folder))
    path = Path(os.path.realpath(root / name))
    if path.parent != root and root not in path.parents:
        raise OutputError(f"refusing to write {clip(name)}: it would land outside {root}")
    return root / name
