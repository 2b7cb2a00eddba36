"""The C heap: handing the pages of freed memory back to the system.

glibc's malloc keeps freed medium blocks on its heap (one arena per thread) unless they lie at
its top, so resident memory can stay high after the memory is free.
Two places in vitops free a lot at once, just before they need a lot again:

- XLA's compiler (jax) frees most of what it allocated once a program is compiled; the
  program's buffers, allocated when it first runs, did not reuse that heap. ViT-S/16 at 1024
  px, batch 2, with the default analyses: compiling left 155 MB more resident, 102 MB of it
  free and handed back by a trim, and `vitops analyze` peaked 130 to 160 MB lower.
- Eager PyTorch's chunked reductions free tens of 1-30 MB buffers per block (see
  `vitops.core.ops.attend_rows`).

Elsewhere (macOS, musl) there is no `malloc_trim` and these calls do nothing.
"""

from __future__ import annotations

import contextvars
import ctypes
import ctypes.util

_TRIM: list = []  # [malloc_trim or None], looked up once


def trim() -> None:
    """Return the free pages of the C heap to the system (glibc's `malloc_trim(0)`)."""
    if not _TRIM:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _TRIM.append(getattr(libc, "malloc_trim", None))
        except OSError:
            _TRIM.append(None)
    if _TRIM[0] is not None:
        _TRIM[0](0)


# jax reports each finished XLA compilation as this event, before the program first runs
# (`jax.monitoring`; the name jax's own dispatch records under).
JAX_COMPILED_EVENT = "/jax/core/compile/backend_compile_duration"
_IN_VITOPS = contextvars.ContextVar("vitops_compiling", default=False)
_LISTENING: list = []


def _after_jax_compile(event: str, seconds: float, **_) -> None:
    if event == JAX_COMPILED_EVENT and _IN_VITOPS.get():
        trim()


class trimmed_after_compile:
    """Within this context, the heap is trimmed after every jax compilation it starts (and
    only those: jax's listeners are process-wide, so the listener checks it is inside)."""

    def __enter__(self):
        if not _LISTENING:
            import jax.monitoring

            jax.monitoring.register_event_duration_secs_listener(_after_jax_compile)
            _LISTENING.append(True)
        self._token = _IN_VITOPS.set(True)
        return self

    def __exit__(self, *exc):
        _IN_VITOPS.reset(self._token)
        return False
