"""Time and peak resident memory to load a vitops file (default ViT-B/16). Prints JSON.

The file is written first (random weights) in a separate process, so the measured process
holds nothing but the interpreter, Keras and its backend when loading starts. Peak memory is
ru_maxrss of the measuring process; its baseline is taken after the imports, just before load.

    KERAS_BACKEND=torch python benchmarks/load.py
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_mb() -> float:
    """VmHWM: the resident high-water mark since the last reset (see measure)."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm == hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_file(variant, path):
    import vitops

    config = vitops.get_config(variant)
    model = vitops.VisionTransformer(config)
    vitops.save(path, model.get_params(), config)


def measure(path):
    import keras  # noqa: F401  (the backend's import is part of the baseline, not of loading)

    import vitops

    # The imports had their own peak: reset the high-water mark (clear_refs 5 resets VmHWM),
    # then measure the increase over the current resident size.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = rss_mb()
    start = time.perf_counter()
    model = vitops.load(path)
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "baseline_rss_mb": base,
        "peak_rss_mb": peak_mb(),
        "peak_above_baseline_mb": peak_mb() - base,
        "rss_after_mb": rss_mb(),
        "params": int(sum(math.prod(v.shape) for v in model.weights)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="vit_base_patch16_224")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        write_file(args.variant, path)
        size_mb = os.path.getsize(path) / 2**20
        proc = subprocess.run([sys.executable, __file__, "--measure", path], capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"measuring process failed:\n{proc.stderr[-2000:]}")
        out = proc.stdout
    result = json.loads(out.strip().splitlines()[-1])
    result.update(file_mb=size_mb, ratio_peak_to_file=result["peak_above_baseline_mb"] / size_mb)
    print(
        json.dumps(
            {
                "benchmark": "load",
                "backend": keras.config.backend(),
                "variant": args.variant,
                "results": result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
