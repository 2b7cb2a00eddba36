"""The C heap: handing the pages of freed memory back to the system.

glibc's malloc keeps freed medium blocks on its heaps (per-thread arenas, shared once there
are many threads) unless they lie at a heap's top, so resident memory can stay high after the
memory is free. vitops hands such pages back where much was just freed and much is about to
be needed:

- after each of its own XLA compilations on jax: the compiler frees most of what it
  allocated, and the program's buffers, allocated when it first runs, did not reuse that
  heap. ViT-S/16 at 1024 px, batch 2, with the default analyses (CPU): compiling left 155 MB
  more resident, 102 MB of it free and handed back by a trim; in two runs each, `vitops
  analyze` peaked 128 and 163 MB lower;
- before each batch's pass where a block's maps exceed the analyses' budget, and before the
  report (`vitops.app.run`);
- between the chunks of eager PyTorch's reductions, which free tens of 1-30 MB buffers per
  block (`vitops.backend.torch_memory.release_freed`).

Elsewhere (macOS, musl, or another allocator preloaded) these calls do nothing useful, and
no harm.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import threading

_TRIM: list = []  # [malloc_trim or None], looked up once


def trim() -> None:
    """Return the free pages of the C heap to the system (glibc's `malloc_trim(0)`)."""
    if not _TRIM:
        try:
            # the process's own symbols (dlopen(NULL)): no library search, no subprocess
            fn = getattr(ctypes.CDLL(None), "malloc_trim", None)
        except OSError:
            fn = None
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        _TRIM.append(fn)
    if _TRIM[0] is not None:
        _TRIM[0](0)


def _jax_compiled_event() -> str:
    """The event jax records for each finished XLA compilation, before the program first runs
    (also for a program loaded from its persistent cache)."""
    try:
        from jax._src.dispatch import BACKEND_COMPILE_EVENT  # not public: read where it is

        return BACKEND_COMPILE_EVENT
    except ImportError:
        return "/jax/core/compile/backend_compile_duration"


_IN_VITOPS = contextvars.ContextVar("vitops_compiling", default=False)
_LISTENER_LOCK = threading.Lock()
_EVENT: list = []


def _after_jax_compile(event: str, duration_secs: float, **kwargs: str | int) -> None:
    # jax calls this for every compilation in the process: nothing may raise into it
    if _IN_VITOPS.get() and _EVENT and event == _EVENT[0]:
        with contextlib.suppress(OSError, ctypes.ArgumentError):
            trim()


class trimmed_after_compile:
    """Within this context, the heap is trimmed after every jax compilation it starts (and
    only those: jax's listeners are process-wide, so the listener checks it is inside)."""

    def __enter__(self):
        if not _EVENT:
            with _LISTENER_LOCK:  # registered once, whichever thread comes first
                if not _EVENT:
                    import jax.monitoring

                    jax.monitoring.register_event_duration_secs_listener(_after_jax_compile)
                    _EVENT.append(_jax_compiled_event())
        self._token = _IN_VITOPS.set(True)
        return self

    def __exit__(self, *exc):
        _IN_VITOPS.reset(self._token)
        return False
