"""Temporary files that never outlive their operation, and the sweep that removes the ones a
killed process could not.

Every temporary vitops makes (a conversion's output before it is moved into place, a
download) lives next to its destination under one recognisable name,

    .vitops-tmp-<host>-<pid>-<random>-<what>

and is removed on any exit the process sees: an exception, KeyboardInterrupt, and SIGTERM
once `signals.exit_on_sigterm` has made it raise SystemExit. SIGKILL cannot be seen; the next vitops
operation in that folder sweeps what it left (`sweep`): an entry of this host whose owner
process is gone, or whose PID now belongs to a process younger than the entry. Entries of
other hosts (a shared folder) are left alone for a day, since their owners cannot be asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import VitopsError, os_reason

TEMP_PREFIX = ".vitops-tmp-"
_NAME = re.compile(r"^\.vitops-tmp-([0-9a-f]{8})-(\d+)-")
# Leftovers of another host are swept only when this old (their owner cannot be checked).
FOREIGN_AGE_S = 24 * 3600
# /proc gives a process's start time to 1/100 s and the boot time to 1 s.
_CLOCK_SLACK_S = 2.0


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_name(what: str) -> str:
    """A fresh temporary name owned by this process: prefix, host, PID, random, `what`."""
    return f"{TEMP_PREFIX}{_host()}-{os.getpid()}-{secrets.token_hex(4)}-{what}"


def _start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after "pid (comm)"
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_gone(pid: int, mtime: float) -> bool:
    """True when the process that made an entry (last modified at mtime) no longer runs."""
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: go by age alone
        return time.time() - mtime > FOREIGN_AGE_S
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):  # killed, not yet reaped by its parent
            return True
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return False
    start = _start_time(pid)
    # The PID was reused: the entry is older than the process that has the PID now.
    return start is not None and mtime < start - _CLOCK_SLACK_S


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


def sweep(directory) -> list[str]:
    """Remove the temporaries in `directory` (not below it) that a killed process left; return
    their names. Never touches a name without vitops' prefix, nor a live owner's entry."""
    directory = Path(directory)
    removed: list[str] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    host, now = _host(), time.time()
    for path in entries:
        m = _NAME.match(path.name)
        if not m:
            continue
        try:
            mtime = _newest_mtime(path)
        except OSError:
            continue
        if m.group(1) == host:  # this process's own PID too: an entry older than it is stale
            stale = _owner_gone(int(m.group(2)), mtime)
        else:
            stale = now - mtime > FOREIGN_AGE_S
        if not stale:
            continue
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path.name)
    return removed


def _umask() -> int:
    """The process umask, read without changing it where /proc says it (setting it to read it
    would briefly affect files other threads create)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


def check_output_file(
    path, error: type[VitopsError], replaceable: Callable[[str], bool] | None = None, kind: str = "file"
) -> str:
    """`path` made absolute, after checking that a file may be written there: not a directory,
    not a symbolic link, and, when something is there, a `kind` vitops wrote (`replaceable`).
    For checking an output before the work that fills it; `atomic_output` checks it again."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.islink(path):
        raise error(f"cannot write {path}: it is a symbolic link; give the file itself or a new name")
    if os.path.isdir(path):
        raise error(f"cannot write {path}: it is a directory; give a file name")
    if replaceable is not None and os.path.lexists(path) and not replaceable(path):
        raise error(
            f"cannot write {path}: a file that is not a {kind} vitops wrote is there; "
            "give a new name or move it away first"
        )
    return path


@contextlib.contextmanager
def atomic_output(
    path, error: type[VitopsError], replaceable: Callable[[str], bool] | None = None, kind: str = "file"
) -> Iterator[str]:
    """Yield a temporary path for `path`; on success move it onto `path`, on any exit without
    success remove it, so `path` is either untouched or complete.

    vitops replaces only what it wrote: an existing `path` is replaced only when
    replaceable(path) says it is a `kind` vitops wrote (None: every file there is vitops', as in
    its own cache). A symbolic link at `path` is never replaced.

    The temporary path lies in a temporary folder of its own beside `path`, so whatever the
    writer makes there too (safetensors writes through a `.tmpXXXXXX` file of its own) goes
    with it. It is created at once, so an unwritable folder or a directory at `path` is
    reported before any work. OS errors of the folder and the final move become `error`
    naming `path` and the reason (the body reports its own); stale temporaries of killed
    processes in the folder are swept first.
    """
    path = check_output_file(path, error, replaceable, kind)
    directory, name = os.path.split(path)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise error(f"cannot create the folder {directory}: {os_reason(e)}") from None
    sweep(directory)
    folder = os.path.join(directory, temp_name(name)[:255])
    try:
        os.mkdir(folder)
    except OSError as e:
        raise error(f"cannot write {path}: {os_reason(e)}") from None
    tmp = os.path.join(folder, name)
    try:
        try:
            yield tmp
        except OSError as e:
            if isinstance(e, VitopsError) or e.filename:
                raise
            raise error(f"cannot write {path}: {os_reason(e)}") from None  # a write that names no file
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # writers may make it 0600; give the usual mode
            os.replace(tmp, path)
        except OSError as e:
            raise error(f"cannot write {path}: {os_reason(e)}") from None
    finally:  # success, an error, KeyboardInterrupt or SystemExit (SIGTERM): nothing stays
        _remove(folder)


@contextlib.contextmanager
def temp_directory(parent, what: str, error: type[VitopsError]) -> Iterator[Path]:
    """A fresh folder inside `parent` with a temporary name, removed on any exit."""
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        sweep(parent)
        path = parent / temp_name(what)
        path.mkdir()
    except OSError as e:
        raise error(f"cannot write in {parent}: {os_reason(e)}") from None
    try:
        yield path
    finally:
        _remove(str(path))
