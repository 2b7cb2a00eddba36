"""Forward-pass throughput of vitops on the active backend, beside timm in the same run.

Prints JSON: images/s for each way of running the model (the Keras user's
`predict_on_batch`, the backend's own compilation: jax.jit, tf.function with XLA, torch eager and
torch.compile), with and without returning every block's attention; achieved GFLOP/s and its
share of the device's matmul peak, measured here with a large matmul; and, when PyTorch and timm
are installed, timm's model of the same variant on the same input (float32, and bfloat16 under
torch.autocast). Timings are interleaved round by round (vitops, timm, vitops, ...) and
reported as medians, so the ratios are taken side by side.

    KERAS_BACKEND=torch python benchmarks/forward.py --variant vit_base_patch16_224 --batch 8
    KERAS_BACKEND=torch python benchmarks/forward.py --dtype bfloat16
"""

from __future__ import annotations

from timing import environment, interleaved, timm, torch  # before Keras: torch first (see timing)

import argparse
import json
import os
import time

import keras
import numpy as np

import vitops
from vitops.backend import compile as _compile
from vitops.backend import distribute as _distribute


def vit_flops(config, image_size) -> float:
    """Multiply-adds x 2 of one image's forward pass (matmuls and attention products)."""
    h, w = image_size
    p, d, m = config.patch_size, config.dim, config.mlp_dim
    n = config.num_prefix_tokens + (h // p) * (w // p)
    per_block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * m
    embed = 2 * (h // p) * (w // p) * p * p * 3 * d
    head = 2 * d * config.num_classes * (2 if config.distilled else 1)
    return float(config.depth * per_block + embed + head)


def sync(x):
    return _compile.synchronize(x)


def matmul_peak_gflops(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """The backend's large square matmul rate on this device: the practical peak."""
    a = keras.ops.ones((size, size), dtype=dtype)
    b = keras.ops.ones((size, size), dtype=dtype)
    mm = _compile.compiled(lambda a, b: keras.ops.matmul(a, b))
    sync(mm(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        sync(mm(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


class WithAttention(keras.Model):
    """The model returning logits and every block's attention, for predict_on_batch."""

    def __init__(self, vit):
        super().__init__(dtype=vit.dtype_policy)
        self.vit = vit

    def call(self, x):
        out = self.vit(x, return_attention=True)
        return out.get("logits", out["features"]), out["attention"]


def make_checkpoint(variant: str, path: str):
    """Random weights for the variant: from timm when installed, else vitops' own initialiser."""
    config = vitops.get_config(variant)
    if timm is not None:
        from safetensors.torch import save_file

        torch.manual_seed(0)
        name = (
            variant
            if not variant.startswith("dino_")
            else {
                "dino_vits16": "vit_small_patch16_224",
                "dino_vits8": "vit_small_patch8_224",
                "dino_vitb16": "vit_base_patch16_224",
                "dino_vitb8": "vit_base_patch8_224",
            }[variant]
        )
        ref = timm.create_model(name, pretrained=False, num_classes=config.num_classes).eval()
        src = path + ".timm.safetensors"
        save_file(ref.state_dict(), src)
        vitops.convert(src, path, arch=variant)
        os.remove(src)
        return ref
    model = vitops.VisionTransformer(config)
    vitops.save(path, model.get_params(), config)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--modes",
        default="predict,attention",
        help="comma list of: predict, attention, call (torch), torch_compile",
    )
    parser.add_argument("--no-timm", action="store_true", help="skip the timm reference")
    parser.add_argument(
        "--devices",
        type=int,
        default=1,
        help="JAX: also run data-parallel over this many devices (batch per device = --batch); "
        "on a CPU, simulate them with XLA_FLAGS=--xla_force_host_platform_device_count=N",
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    backend = keras.config.backend()

    import tempfile

    # The checkpoint (330 MB for ViT-B/16) is only needed until it is loaded.
    with tempfile.TemporaryDirectory(prefix="vitops-bench-") as tmp:
        path = os.path.join(tmp, f"{args.variant}.safetensors")
        ref = make_checkpoint(args.variant, path)
        # bfloat16: a Keras dtype policy (float32 weights, bfloat16 compute), as timm's autocast.
        model = vitops.load(path, dtype="mixed_bfloat16" if args.dtype == "bfloat16" else None)
    if args.no_timm:
        ref = None
    config = model.config
    size = config.image_size
    x = np.random.default_rng(0).standard_normal((args.batch, *size, 3)).astype(np.float32)

    runners = {}
    # The Keras user's ordinary path. predict_on_batch compiles the backend's way: jax.jit on
    # JAX, tf.function on TensorFlow; PyTorch runs eagerly.
    if "predict" in modes:
        runners["vitops_predict_on_batch"] = lambda: sync(model.predict_on_batch(x))
    if "attention" in modes:
        with_attention = WithAttention(model)
        runners["vitops_predict_on_batch_attention"] = lambda: sync(with_attention.predict_on_batch(x))
    if "call" in modes and backend == "torch":
        # The analysis path on PyTorch: the model called eagerly, outputs kept as tensors.
        # predict_on_batch copies every output into a new numpy array (Keras' torch
        # convert_to_numpy), 179 MB of maps per ViT-B/16 batch of 8; this measures the
        # attention cost without that copy.
        def run_call(return_attention):
            with torch.inference_mode():
                return sync(model(x, return_attention=return_attention))

        runners["vitops_call"] = lambda: run_call(False)
        runners["vitops_call_attention"] = lambda: run_call(True)
    if "torch_compile" in modes and backend == "torch":
        compiled_model = torch.compile(model)

        def run_compiled():
            with torch.inference_mode():
                return sync(compiled_model(x))

        runners["vitops_torch_compile"] = run_compiled
    if args.devices > 1:
        # Data parallel through keras.distribution (JAX): the compiled inference on one device
        # with --batch images, and on N devices with N x --batch images sharded over them.
        distribution = _distribute.data_parallel(args.devices)
        _distribute.distribute_model(model, distribution)
        xn = np.concatenate([x] * args.devices)
        runners["vitops_infer_1_device"] = lambda: sync(model.infer(x)["logits"])

        def run_parallel():
            with distribution.scope():
                return sync(model.infer(_distribute.distribute_batch(xn, distribution))["logits"])

        runners[f"vitops_infer_{args.devices}_devices"] = run_parallel
    if ref is not None:
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

        def timm_run():
            with torch.inference_mode():
                if args.dtype == "bfloat16":
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return ref(xt)
                return ref(xt)

        runners["timm"] = timm_run

    times = interleaved(runners, args.rounds)  # two warm-up calls each: compilation, caches

    flops = vit_flops(config, size) * args.batch
    peak = matmul_peak_gflops(args.dtype)
    results = {}
    for k, ts in times.items():
        t = float(np.median(ts))
        images = args.batch * (args.devices if k == f"vitops_infer_{args.devices}_devices" else 1)
        results[k] = {
            "images_per_s": images / t,
            "seconds_per_batch": t,
            "gflops_per_s": flops * images / args.batch / t / 1e9,
            "share_of_matmul_peak": flops * images / args.batch / t / 1e9 / peak,
        }
    if "timm" in results:
        for k in results:
            results[k]["ratio_to_timm"] = results[k]["images_per_s"] / results["timm"]["images_per_s"]
    if "vitops_predict_on_batch" in results and "vitops_predict_on_batch_attention" in results:
        results["attention_cost"] = 1 - (
            results["vitops_predict_on_batch_attention"]["images_per_s"]
            / results["vitops_predict_on_batch"]["images_per_s"]
        )
    if args.devices > 1:
        one = results["vitops_infer_1_device"]["images_per_s"]
        many = results[f"vitops_infer_{args.devices}_devices"]["images_per_s"]
        results["data_parallel"] = {
            "devices": args.devices,
            "total_images_per_s": many,
            "per_device_images_per_s": many / args.devices,
            "one_device_images_per_s": one,
            "scaling_efficiency": many / (args.devices * one),
        }
    if "vitops_call" in results and "vitops_call_attention" in results:
        results["attention_cost_call"] = 1 - (
            results["vitops_call_attention"]["images_per_s"] / results["vitops_call"]["images_per_s"]
        )
    print(
        json.dumps(
            {
                "benchmark": "forward",
                "backend": backend,
                "variant": args.variant,
                "batch": args.batch,
                "dtype": args.dtype,
                "image_size": list(size),
                "gflop_per_image": vit_flops(config, size) / 1e9,
                "matmul_peak_gflops": peak,
                "rounds": args.rounds,
                **environment(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
