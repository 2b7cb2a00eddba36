"""Output folders that appear whole or not at all, and may only replace what vitops wrote.

    with OutputFolder("report/", inputs=images) as tmp:   # the policy is checked first
        ...write into tmp...
    # report/ now holds exactly what was written; before, it held the previous run's files

The policy (`check_output_folder`), the same for every command that writes a folder: the
destination is missing, an empty folder, or a folder vitops wrote, and it neither is nor holds
any of the run's inputs. A folder vitops wrote carries a manifest (MANIFEST, a small JSON file
listing the entries it wrote); one that holds anything else is not vitops' to replace. Anything
else (a symlink, a file, a home directory, a folder of photos) is refused with an OutputError
that says how to proceed, before any work is done.

Everything is written into a temporary folder beside the destination (named as every vitops
temporary, see `vitops.io.temporary`), which replaces the old one only at the end (Linux: one
atomic exchange, renameat2(RENAME_EXCHANGE); elsewhere two renames). A run that fails or is
stopped (an exception, Ctrl-C, SIGTERM) removes its temporary folder and leaves the previous
folder as it was; what a killed run left is swept by the next one, and a previous folder left
aside between the two renames is put back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from ..errors import OutputError, capped, clip, os_reason
from .temporary import TEMP_PREFIX, sweep, temp_name

MANIFEST = ".vitops-output.json"
_PREVIOUS = ".previous"  # the name's end for a previous folder moved aside
_MAX_MANIFEST_BYTES = 1 << 16
_HOW = "give a new or empty folder, or move it away first"


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


def _absolute(path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def written_entries(folder: Path) -> set[str] | None:
    """The entries a folder's manifest says vitops wrote, or None when it has no readable one."""
    try:
        with open(folder / MANIFEST, "rb") as f:
            data = json.loads(f.read(_MAX_MANIFEST_BYTES + 1)[:_MAX_MANIFEST_BYTES])
    except (OSError, ValueError, RecursionError):
        return None
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        return None
    return set(entries)


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def is_inside(path, folder) -> bool:
    """Whether `path` (existing or not) is `folder` or lies below it, symlinks resolved."""
    return _contains(Path(os.path.realpath(_absolute(folder))), Path(os.path.realpath(_absolute(path))))


def check_output_folder(path, inputs: Iterable = ()) -> Path:
    """The destination folder as an absolute path, after checking the policy (module docstring);
    an OutputError naming the problem and how to proceed otherwise."""
    path = _absolute(path)
    if path.is_symlink():
        raise OutputError(f"output folder {path} is a symbolic link; give the folder itself (or a new one)")
    real = Path(os.path.realpath(path))
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)) or not os.path.lexists(item):
            continue  # a loaded model, an array, a shipped model's name
        source = Path(os.path.realpath(_absolute(item)))
        if _contains(real, source):
            raise OutputError(
                f"output folder {path} holds the input {clip(os.fspath(item), 200)}: writing the "
                f"report there would replace it; {_HOW}"
            )
    if not path.exists():
        return path
    if not path.is_dir():
        raise OutputError(f"output folder {path} exists and is not a folder; {_HOW}")
    try:
        entries = sorted(e.name for e in os.scandir(path))
    except OSError as e:
        raise OutputError(f"cannot read the output folder {path}: {os_reason(e)}") from None
    if not entries:
        return path
    written = written_entries(path)
    if written is None:
        raise OutputError(
            f"output folder {path} holds {len(entries):,} entries vitops did not write "
            f"({capped(entries, 3)}); {_HOW}"
        )
    foreign = [e for e in entries if e != MANIFEST and e not in written]
    if foreign:
        raise OutputError(
            f"output folder {path} was written by vitops but now also holds "
            f"{capped(foreign, 3)}, which vitops did not write; {_HOW}"
        )
    return path


class OutputFolder:
    """Context manager: checks the policy, then yields a temporary folder that becomes `path`
    on success, with a manifest of what was written.

    command: which vitops command wrote it (recorded in the manifest); inputs: the run's input
    paths, none of which the folder may hold.
    """

    def __init__(self, path, command: str = "vitops", inputs: Iterable = ()):
        self.path = _absolute(path)
        self.command = command
        self.inputs = list(inputs)
        self.tmp: Path | None = None

    def _restore_previous(self) -> None:
        """A run killed between moving the previous folder aside and moving its own in: put the
        previous one back."""
        if self.path.exists() or self.path.is_symlink():
            return
        end = f"-{self.path.name}{_PREVIOUS}"
        for p in self.path.parent.iterdir():
            if p.name.startswith(TEMP_PREFIX) and p.name.endswith(end) and p.is_dir() and not p.is_symlink():
                os.replace(p, self.path)
                return

    def __enter__(self) -> Path:
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self._restore_previous()
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {os_reason(e)}") from None
        check_output_folder(self.path, self.inputs)
        try:
            sweep(parent)
            self.tmp = parent / temp_name(self.path.name)
            self.tmp.mkdir()
        except OSError as e:
            raise OutputError(f"cannot write {self.path}: {os_reason(e)}") from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        tmp = self.tmp
        assert tmp is not None, "OutputFolder left without being entered"
        if exc_type is not None:  # an error, KeyboardInterrupt, SystemExit (SIGTERM)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError) and not isinstance(exc, OutputError) and not exc.filename:
                # a write that failed mid-way (a full disk) names no file: name the output
                raise OutputError(f"cannot write {self.path}: {os_reason(exc)}") from None
            return False
        try:
            self._write_manifest(tmp)
            check_output_folder(self.path, self.inputs)  # nothing foreign arrived meanwhile
            self._commit(tmp)
        except OSError as e:  # OutputError included
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OutputError):
                raise
            raise OutputError(f"cannot move the finished output into {self.path}: {os_reason(e)}") from None
        return False

    def _write_manifest(self, tmp: Path) -> None:
        try:
            written_by = f"vitops {metadata.version('vitops')}"
        except metadata.PackageNotFoundError:
            written_by = "vitops"
        entries = sorted(e.name for e in os.scandir(tmp))
        record = {"written_by": written_by, "command": self.command, "entries": entries}
        (tmp / MANIFEST).write_text(json.dumps(record, indent=1))

    def _commit(self, tmp: Path) -> None:
        if not self.path.exists():
            os.replace(tmp, self.path)
            return
        if _exchange(tmp, self.path):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous output
            return
        old = self.path.parent / temp_name(self.path.name + _PREVIOUS)
        os.replace(self.path, old)
        os.replace(tmp, self.path)
        shutil.rmtree(old, ignore_errors=True)
