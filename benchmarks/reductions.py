"""The cost of the in-forward analyses over the plain forward pass, reduction by reduction.

Prints JSON: seconds per batch of `model.infer` without reductions and with each
`vitops.analysis.Reductions` case (one analysis, then all of them), interleaved round by
round in one process, medians, and each case's ratio to the plain pass.

    KERAS_BACKEND=jax python benchmarks/reductions.py --variant vit_small_patch14_dinov2 --batch 8
    KERAS_BACKEND=torch python benchmarks/reductions.py --cases plain,all --rounds 5
"""

from __future__ import annotations

from timing import environment, interleaved  # before Keras: torch first (see timing)

import argparse
import json
import statistics
import tempfile

import numpy as np
from forward import make_checkpoint

import vitops
from vitops.analysis import Reductions
from vitops.app.settings import RunSettings
from vitops.backend import compile as _compile

CASES = {
    "plain": None,
    "cls_attention": Reductions(cls_attention=True),
    "distance": Reductions(distance=True),
    "rollout": Reductions(rollout="cls"),
    "token_mass": Reductions(token_mass=True),
    "grams": Reductions(grams=True),
    "token_norms": Reductions(token_norms=True),
    "logit_lens": Reductions(logit_lens=True),
    "pca": Reductions(pca=True),
    "all": RunSettings().reductions(),  # what `vitops analyze` computes by default
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="vit_small_patch14_dinov2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument(
        "--memory-mb",
        type=int,
        default=None,
        help="the analyses' memory budget for every case (`vitops analyze --memory-mb`); default: its default",
    )
    args = ap.parse_args(argv)
    names = args.cases.split(",")
    unknown = [n for n in names if n not in CASES]
    if unknown or "plain" not in names:
        ap.error(f"--cases must name plain and any of {', '.join(CASES)}; unknown: {unknown}")
    with tempfile.TemporaryDirectory() as tmp:
        make_checkpoint(args.variant, f"{tmp}/m.safetensors")
        model = vitops.load(f"{tmp}/m.safetensors")
    x = np.random.default_rng(0).standard_normal((args.batch, *model.config.image_size, 3)).astype(np.float32)

    def runner(spec):
        if spec is not None and args.memory_mb is not None:
            spec = spec.replace(memory=args.memory_mb << 20)
        # every output waited for: the rollout's second pass runs after the features are ready
        return lambda: _compile.synchronize(model.infer(x, reductions=spec))

    times = interleaved({n: runner(CASES[n]) for n in names}, args.rounds)
    base = statistics.median(times["plain"])
    result = {
        "benchmark": "reductions",
        "variant": args.variant,
        "batch": args.batch,
        "image_size": list(model.config.image_size),
        "rounds": args.rounds,
        "memory_mb": args.memory_mb,
        **environment(),
        "seconds_per_batch": {n: statistics.median(t) for n, t in times.items()},
        "ratio_to_plain": {n: statistics.median(t) / base for n, t in times.items()},
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
