"""Analyses over data sets: accumulators that merge exactly, shards analysed in separate
processes that merge into one run's report, data-parallel runs on simulated JAX devices, and
merges of incompatible states refused with the difference named.

Tolerances: shards against one run, 1e-9 relative (absolute floor 1e-15) on every number of
metrics.json (float64 sums, only their order differs); two simulated devices against one,
1e-6 relative (absolute floor 1e-7): float32 work split another way, and identical predictions.
"""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import vitops
from vitops import analysis
from vitops.analysis.accumulate import Fixed, Moments, load_states, save_states
from vitops.app.cli import main
from vitops.app.commands import analyze
from vitops.app.run import run_study
from vitops.app.settings import RunSettings as StudySettings
from vitops.app.state import load_studies, load_study
from vitops.hub import shipped

BACKEND = keras.config.backend()
MODELS = ["digits_vit", "digits_deit"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """18 real digits (the shipped samples under other names, and a few flipped) and one bad file."""
    folder = tmp_path_factory.mktemp("images")
    import cv2

    for k, path in enumerate(shipped.samples() * 2 + shipped.samples()[:2]):
        img = cv2.imread(str(path))
        cv2.imwrite(str(folder / f"img_{k:02d}.png"), img if k < 8 else img[:, ::-1])
    (folder / "img_05x.png").write_text("not an image")
    return folder


def cli(*args, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "vitops", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def free_port_the_kernel_never_assigns() -> int:
    """A TCP port free now and below the kernel's ephemeral range (ip_local_port_range), so
    that no connection or bind to port 0 made meanwhile, by a test running beside this one,
    can take it before the process meant to bind it does."""
    import contextlib
    import random
    import socket
    from pathlib import Path

    low = 32768
    with contextlib.suppress(OSError, ValueError, IndexError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 10000), low), 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def numbers(obj, path=""):
    """Every number of a metrics.json, flattened: {path: array}; strings and labels compared apart."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in ("seconds", "shards"):
                out.update(numbers(v, f"{path}/{k}"))
    elif isinstance(obj, list) and obj and isinstance(obj[0], (dict, str)):
        for i, v in enumerate(obj):
            out.update(numbers(v, f"{path}[{i}]"))
    elif isinstance(obj, (list, int, float)) and not isinstance(obj, bool):
        out[path] = np.asarray(obj, np.float64)
    else:
        out[path] = obj
    return out


def assert_same_metrics(a, b, rtol, atol):
    na, nb = numbers(a), numbers(b)
    assert na.keys() == nb.keys()
    for key in na:
        if isinstance(na[key], np.ndarray):
            np.testing.assert_allclose(nb[key], na[key], rtol=rtol, atol=atol, err_msg=key)
        else:
            assert na[key] == nb[key], key


def test_four_shards_in_separate_processes_merge_into_one_run(tmp_path, images):
    common = ["--model", MODELS[0], "--model", MODELS[1], "--batch-size", "4", "--show", "5"]
    analyze(MODELS, [images], tmp_path / "one", batch_size=4, show=5, progress=False)  # the one run
    states = []
    for i in range(4):
        states.append(tmp_path / f"state{i}.safetensors")
        argv = ["analyze", images, "--shard", f"{i}/4", "--save-state", states[-1], *common]
        if i < 2:  # two shards in processes of their own, as a cluster runs them
            cli(*argv)
        else:  # two in this one, which has run the whole set before them
            assert main([str(a) for a in argv]) == 0
    cli("report", *states[::-1], "--out", tmp_path / "merged")  # any order
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    merged = json.loads((tmp_path / "merged" / "metrics.json").read_text())
    assert merged["images"]["analysed"] == one["images"]["analysed"] == 18
    assert_same_metrics(one, merged, rtol=1e-9, atol=1e-15)
    for name in os.listdir(tmp_path / "one" / "per_image"):
        a, b = tmp_path / "one" / "per_image" / name, tmp_path / "merged" / "per_image" / name
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a), np.load(b))
        else:
            assert a.read_text() == b.read_text()
    # a shard's state given twice, another model's state, other settings: refused, named
    with pytest.raises(vitops.AnalysisError, match="overlap"):
        load_studies([states[0], states[0]])
    # another set of models, other settings: refused, the difference named
    settings = StudySettings(batch_size=4, show=5)
    other = run_study(MODELS[::-1], [images], settings=settings, shard=(1, 4), progress=False)
    with pytest.raises(vitops.AnalysisError, match="different models"):
        load_study(states[0]).merge(other)
    fused = run_study(
        MODELS,
        [images],
        settings=StudySettings(batch_size=4, show=5, head_fusion="max"),
        shard=(1, 4),
        progress=False,
    )
    with pytest.raises(vitops.AnalysisError, match="head_fusion: 'mean' != 'max'"):
        load_study(states[0]).merge(fused)


def test_in_process_shards_and_an_empty_shard(tmp_path, images):
    settings = StudySettings(batch_size=4, show=3)
    one = run_study(MODELS[0], [images], settings=settings, progress=False)
    parts = [
        run_study(MODELS[0], [images], settings=settings, shard=(i, 8), progress=False) for i in range(8)
    ]
    assert sum(p.analysed for p in parts) == one.analysed and min(p.analysed for p in parts) == 0
    merged = parts[0]
    for i, p in enumerate(parts[1:]):
        p.save(tmp_path / f"{i}.safetensors")
        merged.merge(load_study(tmp_path / f"{i}.safetensors"))
    a, b = one.models[0], merged.models[0]
    np.testing.assert_allclose(b.distance.result()["std"], a.distance.result()["std"], rtol=1e-12)
    np.testing.assert_allclose(b.cka.result(), a.cka.result(), rtol=1e-12)
    np.testing.assert_array_equal(b.samples.positions, a.samples.positions)


PARALLEL = ["--model", MODELS[0], "--model", MODELS[1], "--batch-size", "6", "--show", "4"]


@pytest.fixture(scope="module")
def one_device_report(tmp_path_factory, images):
    """The report of a one-process, one-device run, the reference of the parallel runs."""
    out = tmp_path_factory.mktemp("parallel") / "one"
    cli("analyze", images, "--out", out, *PARALLEL)
    return out


def assert_same_report(one, other):
    """metrics.json within 1e-6 (float32 work split another way) and identical predictions."""
    a = json.loads((one / "metrics.json").read_text())
    b = json.loads((other / "metrics.json").read_text())
    assert_same_metrics(a, b, rtol=1e-6, atol=1e-7)
    for m in MODELS:  # predictions identical, image by image
        top = np.load(one / "per_image" / f"{m}_top.npy")
        np.testing.assert_array_equal(top, np.load(other / "per_image" / f"{m}_top.npy"))


@pytest.mark.skipif(BACKEND != "jax", reason="data parallelism runs through keras.distribution on JAX")
def test_two_simulated_devices_equal_one(tmp_path, images, one_device_report):
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    cli("analyze", images, "--out", tmp_path / "two", *PARALLEL, "--devices", "2", env=env)
    assert_same_report(one_device_report, tmp_path / "two")
    proc = subprocess.run(
        [sys.executable, "-m", "vitops", "analyze", "--devices", "3", "--out", tmp_path / "x"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.returncode == 2 and "sees 2 device" in proc.stderr


@pytest.mark.skipif(BACKEND != "jax", reason="multi-process runs are JAX's (jax.distributed)")
def test_two_processes_equal_one(tmp_path, images, one_device_report):
    """Two JAX processes on localhost, joined from the environment as a launcher sets it
    (`--cluster`), one CPU device each, the same command line and the same --out (a shared
    file system): process 0 writes the report of one run, process 1 writes nothing."""
    port = free_port_the_kernel_never_assigns()  # for the coordinator, which binds it later
    out = tmp_path / "cluster"
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "JAX_PLATFORMS": "cpu",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(rank),
        }
        command = [sys.executable, "-m", "vitops", "analyze", str(images), "--out", str(out), *PARALLEL]
        procs.append(
            subprocess.Popen(
                [*command, "--cluster"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr[-3000:]
    assert "process 1 of 2" in results[1][0]
    assert_same_report(one_device_report, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"]["analysed"] == 18


# ---- the accumulators themselves ----


def test_accumulators_merge_save_load(tmp_path, rng):
    values = rng.standard_normal((20, 3, 2)) * 1e-3 + 50.0  # a variance tiny next to the mean
    whole, first, second = Moments(), Moments(), Moments()
    whole.update_values(values)
    first.update_values(values[:7])
    second.update_values(values[7:])
    first.save(tmp_path / "m.safetensors")
    loaded = Moments.load(tmp_path / "m.safetensors").merge(second)
    np.testing.assert_allclose(loaded.result()["std"], values.std(0), rtol=1e-9)
    np.testing.assert_allclose(loaded.result()["mean"], whole.result()["mean"], rtol=1e-15)
    assert loaded.result()["count"] == 20

    dist_a, dist_b = analysis.AttentionDistance(16), analysis.AttentionDistance(8)
    dist_a.update_distances(values)
    dist_b.update_distances(values)
    with pytest.raises(vitops.AnalysisError, match="patch_size: 16 != 8"):
        dist_a.merge(dist_b)
    with pytest.raises(vitops.AnalysisError, match="cannot merge a MinibatchCKA into a AttentionDistance"):
        dist_a.merge(analysis.MinibatchCKA())

    feats = [rng.standard_normal((16, 5)) for _ in range(3)]
    whole, halves = analysis.MinibatchCKA(), [analysis.MinibatchCKA(), analysis.MinibatchCKA()]
    for s in (slice(0, 8), slice(8, 16)):
        whole.update([f[s] for f in feats])
    halves[0].update([f[:8] for f in feats])
    halves[1].update([f[8:] for f in feats])
    save_states(tmp_path / "two.safetensors", {"a": halves[0], "b": halves[1]}, {"note": "x"})
    states, meta = load_states(tmp_path / "two.safetensors")
    assert meta == {"note": "x"}
    np.testing.assert_allclose(states["a"].merge(states["b"]).result(), whole.result(), rtol=1e-12)
    with pytest.raises(vitops.AnalysisError, match="2 x 2"):
        small = analysis.MinibatchCKA()
        small.update([f[:8] for f in feats[:2]])
        whole.merge(small)
    with pytest.raises(vitops.AnalysisError, match="differs"):
        Fixed(a=np.ones(3)).merge(Fixed(a=np.zeros(3)))


def test_state_files_that_are_not_states(tmp_path):
    (tmp_path / "junk").write_bytes(b"\x00" * 64)
    with pytest.raises(vitops.AnalysisError, match="cannot read the analysis state"):
        load_study(tmp_path / "junk")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "vitops"})
    with pytest.raises(vitops.AnalysisError, match="not a vitops analysis state"):
        load_study(tmp_path / "other.safetensors")
    shutil.copy(shipped.model_path("digits_vit"), tmp_path / "w.safetensors")
    with pytest.raises(vitops.AnalysisError, match="not a vitops analysis state"):
        load_study(tmp_path / "w.safetensors")
