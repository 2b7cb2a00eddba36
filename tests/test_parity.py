"""The three backends agree with each other: the same file and images, one subprocess per
backend (Keras picks its backend at import), every output compared pairwise.

Tolerances: outputs and hidden states relative error <= 1e-5, attention absolute <= 2e-6
(float32 summation order differs between backends; measured around 5e-7).
"""

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.timm_reference import TINY, rel_err, timm_twin

BACKENDS = ("jax", "torch", "tensorflow")
WORKER = Path(__file__).with_name("parity_worker.py")

pytestmark = pytest.mark.parity


def run_backends(tmp_path, model_path, images, pos_interp=None):
    np.save(tmp_path / "images.npy", images)
    results = {}
    for backend in BACKENDS:
        out = tmp_path / f"{backend}.npz"
        cmd = [sys.executable, str(WORKER), str(model_path), str(tmp_path / "images.npy"), str(out)]
        proc = subprocess.run(
            cmd + ([pos_interp] if pos_interp else []),
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": backend},
        )
        assert proc.returncode == 0, f"{backend} worker failed:\n{proc.stderr[-3000:]}"
        results[backend] = dict(np.load(out))
        assert str(results[backend]["backend"]) == backend
    return results


@pytest.mark.parametrize(
    "name,size,pos_interp",
    [
        ("deit_tiny_distilled_patch16_224", (96, 64), None),
        ("vit_small_patch16_224.dino", (48, 112), "dino"),
    ],
)
def test_backends_agree(tmp_path, name, size, pos_interp):
    ref, path = timm_twin(tmp_path, name, **TINY, num_classes=0 if "dino" in name else 9)
    images = np.random.default_rng(0).standard_normal((3, *size, 3)).astype(np.float32)
    results = run_backends(tmp_path, path, images, pos_interp)
    for a, b in itertools.combinations(BACKENDS, 2):
        ra, rb = results[a], results[b]
        assert set(ra) == set(rb)
        for key in ra:
            if key == "backend":
                continue
            if key.startswith("attention"):
                assert np.abs(ra[key] - rb[key]).max() <= 2e-6, (a, b, key)
            else:
                assert rel_err(ra[key], rb[key]) <= 1e-5, (a, b, key)


ANALYSIS_WORKER = Path(__file__).with_name("parity_analysis_worker.py")


def test_analysis_kernels_agree(tmp_path):
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal((4, 2, 3, 13, 13))
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att = (att / att.sum(-1, keepdims=True)).astype(np.float32)
    inputs = {f"att{i}": att[i] for i in range(4)}
    inputs.update(
        fa=rng.standard_normal((16, 24)).astype(np.float32),
        fb=rng.standard_normal((16, 24)).astype(np.float32),
        fc=rng.standard_normal((16, 5)).astype(np.float32),
        pos=rng.standard_normal((13, 8)).astype(np.float32),
        kernel=rng.standard_normal((4, 4, 3, 6)).astype(np.float32),
    )
    inputs["fb"] += inputs["fa"]  # related features, so CKA is not near zero
    np.savez(tmp_path / "inputs.npz", **inputs)
    results = {}
    for backend in BACKENDS:
        proc = subprocess.run(
            [
                sys.executable,
                str(ANALYSIS_WORKER),
                str(tmp_path / "inputs.npz"),
                str(tmp_path / f"{backend}.npz"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": backend},
        )
        assert proc.returncode == 0, f"{backend} worker failed:\n{proc.stderr[-3000:]}"
        results[backend] = dict(np.load(tmp_path / f"{backend}.npz"))
    for a, b in itertools.combinations(BACKENDS, 2):
        for key in results[a]:
            if key != "backend":
                np.testing.assert_allclose(
                    results[a][key], results[b][key], rtol=1e-5, atol=1e-6, err_msg=f"{key}: {a} vs {b}"
                )


def test_analyze_metrics_agree(tmp_path):
    """`vitops analyze` of the shipped models on the shipped digits: every number of metrics.json
    (computed inside each backend's compiled forward pass) agrees across backends, to float32
    rounding carried through the analyses: relative 1e-4, absolute 1e-5; top classes identical."""
    from test_study import numbers

    metrics = {}
    for backend in BACKENDS:
        out = tmp_path / backend
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "vitops",
                "analyze",
                "--model",
                "digits_vit",
                "--model",
                "digits_deit",
                "--batch-size",
                "4",
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "KERAS_BACKEND": backend, "HF_HUB_OFFLINE": "1"},
        )
        assert proc.returncode == 0, f"{backend}:\n{proc.stderr[-3000:]}"
        metrics[backend] = numbers(__import__("json").loads((out / "metrics.json").read_text()))
        metrics[backend].pop("/backend")
    for a, b in itertools.combinations(BACKENDS, 2):
        assert metrics[a].keys() == metrics[b].keys()
        for key, value in metrics[a].items():
            if isinstance(value, np.ndarray):
                np.testing.assert_allclose(
                    metrics[b][key], value, rtol=1e-4, atol=1e-5, err_msg=f"{key}: {a} vs {b}"
                )
            else:
                assert metrics[b][key] == value, (key, a, b)
