"""The benchmarks' one timer: every runner timed round by round, interleaved, so that the
machine's drift (a shared VM moves by several percent) hits them alike."""

from __future__ import annotations

import time


def interleaved(runners: dict, rounds: int, warmups: int = 2) -> dict[str, list[float]]:
    """{name: [seconds per round]} of each zero-argument callable in runners, after `warmups`
    untimed calls each (compilation, allocator, caches). Callables must synchronise their own
    results (the backends run asynchronously or lazily)."""
    for run in runners.values():
        for _ in range(warmups):
            run()
    times = {k: [] for k in runners}
    for _ in range(rounds):
        for k, run in runners.items():
            start = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - start)
    return times
