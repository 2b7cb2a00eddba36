"""SIGTERM as a clean exit: temporaries removed and `finally` blocks run, as on Ctrl-C.

A program (the CLI's main) calls `exit_on_sigterm` once; a handler it installed itself is kept.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


class _SignalExit(SystemExit):
    """The SystemExit a signal raised (told apart from the program's own); code 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _raise_exit(signum, frame):
    raise _SignalExit(signum)


def signal_exception_in(exc: BaseException | None) -> BaseException | None:
    """What a signal raised, if it is `exc` or in its chain of causes and contexts: the
    SystemExit of SIGTERM (`exit_on_sigterm`) or the KeyboardInterrupt of Ctrl-C.

    A handler's exception that lands while a C function runs Python code (os.fspath calling a
    path's __fspath__, say) comes out as a SystemError ("returned a result with an exception
    set") caused by it; code that turns any exception into an error message, or skips an image
    on one, asks this first so the signal still ends the program (143, or 130 for Ctrl-C)."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, (_SignalExit, KeyboardInterrupt)):
            return e
        seen.add(id(e))
        todo += [e.__cause__, e.__context__]
    return None


def reraise_signal(exc: BaseException) -> None:
    """Raise what a signal raised, found in exc's chain (`signal_exception_in`); otherwise
    return, for the caller's own handling of exc."""
    found = signal_exception_in(exc)
    if found is not None:
        raise found


_previous_unraisablehook = None


def _redeliver_lost_exit(unraisable):
    # A signal handler's exception is lost when the signal lands while Python runs a gc callback,
    # a __del__ or a weakref callback (jax registers a gc callback): Python only prints it as
    # "Exception ignored". Send the signal again, from a thread and a moment later so the handler
    # does not run inside this hook (or the same callback); it repeats until the exit is raised
    # where it can end the program.
    if isinstance(unraisable.exc_value, _SignalExit):
        again = threading.Timer(0.02, os.kill, (os.getpid(), unraisable.exc_value.signum))
        again.daemon = True
        again.start()
    elif _previous_unraisablehook is not None:
        _previous_unraisablehook(unraisable)


def exit_on_sigterm() -> bool:
    """Make SIGTERM raise SystemExit(143) in the main thread, so temporaries are removed and
    `finally` blocks run as on Ctrl-C. For programs (the CLI's main); a handler the program
    installed itself is kept. Returns whether the handler is now vitops'."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _raise_exit:
        return True
    if current not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _raise_exit)
    global _previous_unraisablehook
    if sys.unraisablehook is not _redeliver_lost_exit:
        _previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, _redeliver_lost_exit
    return True
