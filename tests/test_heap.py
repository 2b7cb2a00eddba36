"""Handing freed heap pages back (`vitops.backend.heap`): what a trim returns, and that it
follows each of vitops' own XLA compilations on jax, and only those."""

import os
import platform

import keras
import numpy as np
import pytest

from vitops.backend import heap
from vitops.backend.compile import compiled


def _resident_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or "LD_PRELOAD" in os.environ,
    reason="malloc_trim is glibc's (and another allocator may be preloaded)",
)
def test_trim_returns_free_pages_below_live_ones():
    # 200 MB of 1 kB objects, every 200th kept alive: the freed ones lie between live ones,
    # below the heap's top, where glibc keeps them resident until a trim (the holes, 200 kB
    # each, span whole pages of any size up to 64 KiB)
    objects = [bytes(1000) for _ in range(200_000)]
    kept = objects[::200]
    del objects
    before = _resident_mb()
    heap.trim()
    assert before - _resident_mb() > 100, "a trim handed back less than half of the freed 199 MB"
    assert len(kept) == 1000


def test_trimmed_after_each_compilation_of_vitops_own(monkeypatch):
    if keras.config.backend() != "jax":
        pytest.skip("jax reports its compilations; tensorflow compiles inside the call itself")
    import jax

    calls = []
    events = []  # every event jax times, with the trims where they came
    monkeypatch.setattr(heap, "trim", lambda: (calls.append(1), events.append("trim")))

    def seen(event, duration_secs, **kwargs):
        events.append(event)

    jax.monitoring.register_event_duration_secs_listener(seen)
    try:
        f = compiled(lambda x: keras.ops.sin(x) * 2.0)
        x3, x4 = np.ones((3,), "float32"), np.ones((4,), "float32")
        f(x3)
        assert len(calls) == 1
        # right at the compilation's own event (tracing and lowering are timed too)
        at = events.index("trim")
        assert "/jax/core/compile/backend_compile_duration" in events[at - 1 : at + 2], events
        f(x3)  # compiled already: nothing freed, nothing to hand back
        assert len(calls) == 1
        f(x4)  # a new shape is a new compilation
        assert len(calls) == 2
        jax.jit(lambda x: x * 3.0)(np.ones((5,), "float32"))  # not vitops': left alone
        assert len(calls) == 2
    finally:
        jax.monitoring.unregister_event_duration_listener(seen)
