"""What stopping early saves: the first --blocks blocks' hidden states (`num_blocks`, the later
blocks and the head never run) against the full forward pass, both compiled (`infer`), in one
process, interleaved; medians. Prints JSON with the ratio.

    KERAS_BACKEND=jax python benchmarks/early.py --variant vit_base_patch16_224 --blocks 4
"""

from __future__ import annotations

from timing import environment, interleaved  # before Keras: torch first (see timing)

import argparse
import json
import statistics

import keras
import numpy as np

import vitops


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="vit_base_patch16_224")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    config = vitops.get_config(args.variant)
    model = vitops.VisionTransformer(config)
    x = np.random.default_rng(0).standard_normal((args.batch, *config.image_size, 3)).astype(np.float32)

    def run(**kw):
        def go():
            out = model.infer(x, **kw)
            keras.ops.convert_to_numpy(out["hidden"][-1] if "hidden" in out else out["features"])

        return go

    times = interleaved(
        {"full": run(), "early": run(return_hidden=True, num_blocks=args.blocks)}, rounds=args.rounds
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "stop_early",
        "variant": args.variant,
        "depth": config.depth,
        "blocks": args.blocks,
        "batch": args.batch,
        "full_s": round(med["full"], 4),
        "early_s": round(med["early"], 4),
        "early_over_full": round(med["early"] / med["full"], 3),
    }
    result.update(environment())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
