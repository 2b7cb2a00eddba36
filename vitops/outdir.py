"""An output folder that appears whole or not at all.

    with OutputFolder("report/") as tmp:   # checks that report/'s parent is writable, first
        ...write into tmp...
    # report/ now holds exactly what was written; before, it held the previous run's files

Everything is written into a temporary folder beside the destination, which replaces the old
one only at the end (Linux: one atomic exchange, renameat2(RENAME_EXCHANGE); elsewhere two
renames). A run that fails or is interrupted leaves the previous folder as it was. Leftovers of
killed runs carry their process id in their name and are swept by the next run once that
process is gone; a previous folder left aside between the two renames is put back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import uuid
from pathlib import Path

from .errors import VitopsError

_TMP, _OLD = ".tmp-", ".old-"


class OutputError(VitopsError, OSError):
    """An output folder that cannot be written."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _owner(path: Path, stem: str) -> int | None:
    """The pid in a leftover's name '.<stem>.tmp-<pid>-<id>' / '.<stem>.old-<pid>-<id>'."""
    rest = path.name[len(f".{stem}"):]
    for tag in (_TMP, _OLD):
        if rest.startswith(tag):
            try:
                return int(rest[len(tag):].split("-", 1)[0])
            except ValueError:
                return None
    return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        renameat2 = libc.renameat2
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

    def _leftovers(self):
        parent, stem = self.path.parent, self.path.name
        if not parent.is_dir():
            return []
        return [p for p in parent.iterdir() if p.name.startswith(f".{stem}{_TMP}") or p.name.startswith(f".{stem}{_OLD}")]

    def sweep(self) -> None:
        """Remove leftovers of runs whose process is gone; restore a previous folder a killed
        run had moved aside."""
        for p in self._leftovers():
            pid = _owner(p, self.path.name)
            if pid is None or _pid_alive(pid):
                continue
            if p.name.startswith(f".{self.path.name}{_OLD}") and not self.path.exists():
                os.replace(p, self.path)  # killed between the two renames: put it back
            else:
                shutil.rmtree(p, ignore_errors=True)

    def __enter__(self) -> Path:
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"--out {self.path} exists and is not a folder")
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the folder for --out {self.path}: {e.strerror or e}") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot write to {parent} (permission denied), where --out {self.path.name} goes")
        self.sweep()
        self.tmp = parent / f".{self.path.name}{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.tmp.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write to {parent}: {e.strerror or e}") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            self._commit()
        except OSError as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise OutputError(f"cannot move the finished output into {self.path}: {e.strerror or e}") from None
        return False

    def _commit(self) -> None:
        if not self.path.exists():
            os.replace(self.tmp, self.path)
            return
        if _exchange(self.tmp, self.path):
            shutil.rmtree(self.tmp, ignore_errors=True)  # now holds the previous output
            return
        old = self.path.parent / f".{self.path.name}{_OLD}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)

