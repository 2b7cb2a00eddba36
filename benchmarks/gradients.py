"""Cost of gradient-weighted attention rollout (Chefer et al. 2021), vitops beside PyTorch hooks
and autograd on timm. Prints JSON.

Four timings on the same random weights and input, interleaved round by round and reported as
medians: vitops' plain forward pass (`model.infer`: jax.jit, tf.function with XLA, torch eager
under inference_mode), vitops' `gradient_rollout` (one forward and one backward pass with the
gradients taken with respect to zero-valued attention deltas, and the relevance rule, compiled
as one function where the backend compiles), timm's forward pass (inference_mode, fused
attention), and the same rollout on timm the way Chefer et al.'s code does it: unfused
attention, forward hooks keeping each block's attention probabilities and their gradients,
autograd backward from the target logits, the rule in PyTorch. The ratios to each one's own
forward pass are what to compare (the budget for vitops: one forward plus one backward pass).

    KERAS_BACKEND=jax python benchmarks/gradients.py --variant vit_base_patch16_224 --batch 8
    KERAS_BACKEND=torch python benchmarks/gradients.py --variant vit_tiny_patch16_224 --batch 2 --rounds 2
"""

from __future__ import annotations

from timing import environment, interleaved, torch  # before Keras: torch first (see timing)

import argparse
import json
import os
import tempfile

import keras
import numpy as np
from forward import make_checkpoint

import vitops
from tests.helpers.timm_reference import chefer_relevance  # the tests' reference: timm, hooks, autograd
from vitops.analysis.gradients import gradient_rollout
from vitops.backend import compile as _compile


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-timm", action="store_true", help="skip the timm reference")
    args = parser.parse_args()
    backend = keras.config.backend()

    with tempfile.TemporaryDirectory(prefix="vitops-bench-") as tmp:
        path = os.path.join(tmp, f"{args.variant}.safetensors")
        ref = make_checkpoint(args.variant, path)
        model = vitops.load(path)
    if args.no_timm:
        ref = None
    config = model.config
    if not config.num_classes:
        raise SystemExit(f"{args.variant} has no head: the benchmark explains the top class")
    x = np.random.default_rng(0).standard_normal((args.batch, *config.image_size, 3)).astype(np.float32)

    runners = {
        "vitops_forward": lambda: _compile.synchronize(model.infer(x)),
        "vitops_gradient_rollout": lambda: _compile.synchronize(gradient_rollout(model, x)),
    }
    if ref is not None:
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        # As vitops: gradients for the activations only, not the weights (Chefer et al.'s code
        # also fills every weight's .grad). Autograd records the graph because the input
        # requires a gradient; its own gradient is one small extra matmul.
        ref.requires_grad_(False)
        xg = xt.clone().requires_grad_(True)

        def timm_forward():
            with torch.inference_mode():
                return ref(xt)

        runners["timm_forward"] = timm_forward
        runners["timm_hooks_autograd_rollout"] = lambda: chefer_relevance(ref, xg, dtype=torch.float32)

    times = interleaved(runners, args.rounds)  # two warm-up calls each: compilation, caches

    med = {k: float(np.median(ts)) for k, ts in times.items()}
    results = {
        k: {
            "seconds_per_batch": med[k],
            "images_per_s": args.batch / med[k],
            "seconds_all_rounds": [float(t) for t in ts],
        }
        for k, ts in times.items()
    }
    ratios = {"vitops_rollout_over_forward": med["vitops_gradient_rollout"] / med["vitops_forward"]}
    if ref is not None:
        ratios["timm_rollout_over_forward"] = med["timm_hooks_autograd_rollout"] / med["timm_forward"]
        ratios["vitops_rollout_over_timm_rollout"] = (
            med["vitops_gradient_rollout"] / med["timm_hooks_autograd_rollout"]
        )
        ratios["vitops_forward_over_timm_forward"] = med["vitops_forward"] / med["timm_forward"]
    print(
        json.dumps(
            {
                "benchmark": "gradients",
                "backend": backend,
                "variant": args.variant,
                "batch": args.batch,
                "image_size": list(config.image_size),
                "rounds": args.rounds,
                **environment(),
                "results": results,
                "ratios": ratios,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
