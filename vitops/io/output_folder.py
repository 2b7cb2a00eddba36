"""An output folder that appears whole or not at all.

    with OutputFolder("report/") as tmp:   # checks that report/'s parent is writable, first
        ...write into tmp...
    # report/ now holds exactly what was written; before, it held the previous run's files

Everything is written into a temporary folder beside the destination (named as every vitops
temporary, see `vitops.io.temporary`), which replaces the old one only at the end (Linux: one atomic
exchange, renameat2(RENAME_EXCHANGE); elsewhere two renames). A run that fails or is stopped
(an exception, Ctrl-C, SIGTERM) removes its temporary folder and leaves the previous folder as
it was; what a killed run left is swept by the next one, and a previous folder left aside
between the two renames is put back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from pathlib import Path

from .temporary import TEMP_PREFIX, sweep, temp_name
from ..errors import OutputError, os_reason

_PREVIOUS = ".previous"  # the name's end for a previous folder moved aside


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        renameat2 = ctypes.CDLL(name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


class OutputFolder:
    """Context manager: yields a temporary folder that becomes `path` on success."""

    def __init__(self, path):
        self.path = Path(os.path.expanduser(os.fspath(path))).absolute()
        self.tmp: Path | None = None

    def _restore_previous(self) -> None:
        """A run killed between moving the previous folder aside and moving its own in: put the
        previous one back."""
        if self.path.exists():
            return
        end = f"-{self.path.name}{_PREVIOUS}"
        for p in self.path.parent.iterdir():
            if p.name.startswith(TEMP_PREFIX) and p.name.endswith(end) and p.is_dir():
                os.replace(p, self.path)
                return

    def __enter__(self) -> Path:
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"--out {self.path} exists and is not a folder")
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._restore_previous()
            sweep(parent)
            self.tmp = parent / temp_name(self.path.name)
            self.tmp.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {os_reason(e)}") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:  # an error, KeyboardInterrupt, SystemExit (SIGTERM)
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            self._commit()
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise OutputError(f"cannot move the finished output into {self.path}: {os_reason(e)}") from None
        return False

    def _commit(self) -> None:
        if not self.path.exists():
            os.replace(self.tmp, self.path)
            return
        if _exchange(self.tmp, self.path):
            shutil.rmtree(self.tmp, ignore_errors=True)  # now holds the previous output
            return
        old = self.path.parent / temp_name(self.path.name + _PREVIOUS)
        os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
