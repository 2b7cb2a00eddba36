"""The memory a piece of Python allocates, for tests that a hostile input is refused before
it is worked through: a bound on what was allocated does not depend on the machine's speed
or load, as a bound on seconds does."""

from __future__ import annotations

import contextlib
import tracemalloc


@contextlib.contextmanager
def allocations():
    """with allocations() as peak: ...; then peak() is the most memory, in bytes, that Python
    and numpy (which reports its buffers to tracemalloc) held at once inside the block,
    beyond what was held when it began."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result: list[int] = []
    try:
        yield lambda: result[0]
    finally:
        result.append(tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()
