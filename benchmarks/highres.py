"""Peak memory of `vitops analyze` at high resolution, beside the plain forward pass.

Each measurement runs in a fresh process and reads its resident-memory peak (VmHWM): the plain
forward pass (`predict_on_batch` on one preprocessed batch) and `vitops analyze` with its
default analyses on --images photographs at the same batch, both at --size pixels (the random
timm model is created at that size, so the weight file's native size is --size). Prints JSON
with both peaks and their difference: what the in-forward analyses add.

    KERAS_BACKEND=jax python benchmarks/highres.py --variant vit_small_patch16_224 --size 1024
    KERAS_BACKEND=jax python benchmarks/highres.py --variant vit_large_patch14_dinov2 --size 1036

--memory-mb sets the analyses' memory budget (`vitops analyze --memory-mb`).
"""

from __future__ import annotations

from timing import environment, timm, torch  # before Keras: torch first (see timing)

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from analyze import photos

PLAIN = """
import sys, time, numpy as np, vitops
from vitops.preprocess import Preprocessing, preprocess
model = vitops.load(sys.argv[1])
p = Preprocessing.for_model(model.config, model.metadata)
x = preprocess(sys.argv[3:3 + int(sys.argv[2])], preprocessing=p)
model.predict_on_batch(x)
start = time.perf_counter(); model.predict_on_batch(x); seconds = time.perf_counter() - start
print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], seconds)
"""

ANALYZE = """
import sys, time, vitops.app.commands as r
start = time.perf_counter()
r.analyze(sys.argv[1], sys.argv[5:], sys.argv[3], batch_size=int(sys.argv[2]), progress=False,
          **({"memory_mb": int(sys.argv[4])} if sys.argv[4] != "default" else {}))
seconds = time.perf_counter() - start
print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], seconds)
"""


def checkpoint(variant: str, size: int, path: str) -> None:
    """A timm model with random weights created at size x size pixels, converted."""
    from safetensors.torch import save_file

    import vitops

    torch.manual_seed(0)
    ref = timm.create_model(variant, pretrained=False, img_size=size).eval()
    src = path + ".timm.safetensors"
    save_file(ref.state_dict(), src)
    vitops.convert(src, path)  # the architecture from the tensors (the registry's is 224 px)
    os.remove(src)


def peak(code: str, *argv: str) -> tuple[float, float]:
    """(VmHWM in MiB, seconds) of code run in a fresh process with argv."""
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    kb, seconds = proc.stdout.split()[-2:]
    return int(kb) / 1024, float(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="vit_small_patch16_224")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--memory-mb", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitops-bench-") as tmp:
        ck = os.path.join(tmp, "model.safetensors")
        checkpoint(args.variant, args.size, ck)
        images = photos(tmp, args.images)
        plain_mb, plain_s = peak(PLAIN, ck, str(args.batch), *images)
        start = time.perf_counter()
        memory = "default" if args.memory_mb is None else str(args.memory_mb)
        analyze_mb, analyze_s = peak(ANALYZE, ck, str(args.batch), os.path.join(tmp, "out"), memory, *images)
    result = {
        "benchmark": "highres_memory",
        "variant": args.variant,
        "size": args.size,
        "batch": args.batch,
        "images": args.images,
        "memory_mb": args.memory_mb,
        "plain_forward_peak_mb": round(plain_mb, 1),
        "plain_forward_batch_s": round(plain_s, 2),
        "analyze_peak_mb": round(analyze_mb, 1),
        "analyze_s": round(analyze_s, 2),
        "analyze_minus_plain_mb": round(analyze_mb - plain_mb, 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    result.update(environment())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
