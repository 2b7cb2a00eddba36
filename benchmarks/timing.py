"""What every benchmark shares: the one interleaved timer, the record of the machine and the
versions a figure was measured with, and the import order (PyTorch before TensorFlow).

Import this module before Keras: when torch and timm are installed it imports them first (timm
pulls in torch._dynamo, which crashes when loaded after TensorFlow), and it names them `torch`
and `timm` (None when absent) for the scripts.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
try:  # torch before TensorFlow when both are installed
    import timm
    import torch
except ImportError:
    torch = timm = None

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/helpers: the reference implementations the tests use too
    sys.path.insert(0, str(ROOT))


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


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, as lscpu shows it), for the record beside a figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    """{"versions", "machine"}: what a benchmark's JSON records about where it ran."""
    import keras

    return {
        "versions": {
            "keras": keras.__version__,
            "backend": keras.config.backend(),
            "torch": getattr(torch, "__version__", None),
            "timm": getattr(timm, "__version__", None),
            "python": sys.version.split()[0],
        },
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
