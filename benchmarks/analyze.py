"""End-to-end cost of `vitops analyze` on the active backend, beside the plain forward pass and
beside the way people do these analyses today, in one process, interleaved. Prints JSON.

  cost    Marginal cost per image of `vitops.app.commands.analyze` with its default analyses (mean
          attention distance, rollout, CLS attention, CLS trajectory, layer CKA, top-5, sample
          figures, per-image files): (time for --large images - time for --small) / the
          difference, against the per-image time of `predict_on_batch` without attention.
          And the same analyses done as people do them today: timm with fused attention off
          and forward hooks collecting every block's maps, then the keras-io example's numpy
          functions for mean attention distance, rollout (its numpy form) and CKA (on the CLS
          token of every layer), on the same --large images, decoded and preprocessed the same
          way. Rounds alternate, medians are reported.
  memory  Peak resident memory (VmHWM) of `vitops analyze` in a fresh process for --small and
          --large images, and the size of report.html.

    KERAS_BACKEND=jax python benchmarks/analyze.py cost --variant vit_base_patch16_224
    KERAS_BACKEND=jax python benchmarks/analyze.py memory --variant vit_small_patch16_224 --small 128 --large 2048

The images are JPEG crops (random position, size and flip, seeded) of the real photographs that
ship with scikit-learn and matplotlib, so decoding costs what it costs on photos.
"""

from __future__ import annotations

from timing import environment, torch  # before Keras: torch first (see timing)

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
from analysis import (
    example_calculate_cka_similarity,
    example_compute_mean_attention_dist,
    example_rollout_cls_numpy,
)
from forward import make_checkpoint

import vitops
from tests.helpers.timm_reference import captured  # the tests' reference: timm with hooks
from vitops.app.commands import analyze
from vitops.backend import compile as _compile
from vitops.preprocess import preprocess


def photos(folder: str, n: int, seed: int = 0) -> list[str]:
    """n JPEG crops of the shipped real photographs, written into folder."""
    import cv2
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    sources = list(load_sample_images().images)  # RGB
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        sources.append(
            cv2.cvtColor(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        )
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(rng.integers(h // 2, h + 1)), int(rng.integers(w // 2, w + 1))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = src[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        path = os.path.join(folder, f"photo_{i:05d}.jpg")
        cv2.imwrite(
            path, cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90]
        )
        paths.append(path)
    return paths


def baseline(ref, images, size, family, batch, patch):
    """timm with hooks, then the example's numpy functions, over the images."""
    prefix = 1
    distances, rollouts, cls = [], [], []
    for s in range(0, len(images), batch):
        x = preprocess(images[s : s + batch], size=size, family=family)
        with captured(ref) as got, torch.no_grad():
            ref(torch.from_numpy(x).permute(0, 3, 1, 2))
        maps = [a.numpy() for a in got["attention"]]
        hidden = [h[:, 0].numpy() for h in got["hidden"]]
        distances.append(np.stack([example_compute_mean_attention_dist(patch, a, prefix) for a in maps], 1))
        rollouts.extend(example_rollout_cls_numpy([a[i : i + 1] for a in maps]) for i in range(len(x)))
        cls.append(np.stack(hidden))  # (L + 1, b, D)
    feats = np.concatenate(cls, axis=1)
    cka = np.array([[example_calculate_cka_similarity(a, b) for b in feats] for a in feats])
    return np.concatenate(distances), np.stack(rollouts), cka


def cost(args):
    backend = keras.config.backend()
    with tempfile.TemporaryDirectory(prefix="vitops-bench-") as tmp:
        ck = os.path.join(tmp, "model.safetensors")
        ref = make_checkpoint(args.variant, ck)
        model = vitops.load(ck)
        images = photos(tmp, args.large)
        config = model.config
        x = preprocess(images[: args.batch], size=config.image_size, family=config.family)
        out = os.path.join(tmp, "report")

        def forward():  # per-image time of the plain pass, over as many images as `small`
            for _ in range(max(1, args.small // args.batch)):
                _compile.synchronize(model.predict_on_batch(x))

        def run(n):
            return lambda: analyze(model, images[:n], out, batch_size=args.batch, progress=False)

        runners = {"forward": forward, "analyze_small": run(args.small), "analyze_large": run(args.large)}
        if ref is not None and not args.no_baseline:
            runners["people_today"] = lambda: baseline(
                ref, images, config.image_size, config.family, args.batch, config.patch_size
            )
        # warm-up: compilation and caches, on one batch each
        forward()
        run(args.batch)()
        if "people_today" in runners:
            baseline(
                ref, images[: args.batch], config.image_size, config.family, args.batch, config.patch_size
            )
        times = {k: [] for k in runners}
        for _ in range(args.rounds):
            for k, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - start)
    med = {k: float(np.median(v)) for k, v in times.items()}
    per_image_forward = med["forward"] / (max(1, args.small // args.batch) * args.batch)
    marginal = (med["analyze_large"] - med["analyze_small"]) / (args.large - args.small)
    results = {
        "seconds": med,
        "all_rounds": times,
        "forward_s_per_image": per_image_forward,
        "analyze_marginal_s_per_image": marginal,
        "marginal_over_forward": marginal / per_image_forward,
    }
    if "people_today" in med:
        results["people_today_over_vitops_large"] = med["people_today"] / med["analyze_large"]
    return {
        "benchmark": "analyze_cost",
        "backend": backend,
        "variant": args.variant,
        "batch": args.batch,
        "small": args.small,
        "large": args.large,
        "rounds": args.rounds,
        "results": results,
    }


def memory(args):
    with tempfile.TemporaryDirectory(prefix="vitops-bench-") as tmp:
        ck = os.path.join(tmp, "model.safetensors")
        make_checkpoint(args.variant, ck)
        images = photos(tmp, args.large)
        results = {}
        for n in (args.small, args.large):
            out = os.path.join(tmp, f"report{n}")
            code = (
                "import resource, sys, vitops.app.commands as r; "
                f"r.analyze({ck!r}, sys.argv[1:], {out!r}, batch_size={args.batch}, progress=False); "
                "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])"
            )
            proc = subprocess.run(
                [sys.executable, "-c", code, *images[:n]],
                capture_output=True,
                text=True,
                env=os.environ.copy(),
            )
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            results[n] = {
                "peak_rss_mb": int(proc.stdout.split()[-1]) / 1024,
                "report_html_mb": os.path.getsize(os.path.join(out, "report.html")) / 2**20,
            }
    ratio = results[args.large]["peak_rss_mb"] / results[args.small]["peak_rss_mb"]
    return {
        "benchmark": "analyze_memory",
        "backend": keras.config.backend(),
        "variant": args.variant,
        "batch": args.batch,
        "results": results,
        "peak_ratio_large_over_small": ratio,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("cost", "memory"))
    parser.add_argument("--variant", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--small", type=int, default=64)
    parser.add_argument("--large", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()
    result = cost(args) if args.what == "cost" else memory(args)
    result.update(environment())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
