"""`vitops analyze`: the numbers in metrics.json against the kernels run directly, every
figure's plotted data, bad inputs, and the report rendered in a real headless browser."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import vitops
from vitops import analysis, hub, plot
from vitops.preprocess import preprocess
from vitops.report import analyze

np_ = keras.ops.convert_to_numpy


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    samples = [str(p) for p in hub.shipped_samples()]
    bad = out.parent / "not_an_image.png"
    bad.write_text("this is text")
    images = samples[:6] + [str(bad), str(out.parent / "missing.jpg")]
    summary = analyze("digits_vit", images, out, batch_size=4, threshold=0.6, progress=False)
    return out, summary, samples[:6]


def test_outputs_and_skipped_images(report):
    out, summary, samples = report
    assert summary["images"] == [os.path.basename(s) for s in samples]
    assert {s["image"] for s in summary["skipped"]} == {"not_an_image.png", "missing.jpg"}
    for name in ["report.html", "metrics.json"] + summary["figures"]:
        assert (out / name).stat().st_size > 0
    assert set(summary["figures"]) == {f"{k}.png" for k in (
        "mean_attention_distance", "attention_rollout", "attention_heatmaps", "position_similarity",
        "projection_filters", "cls_trajectory", "cka")}
    assert json.loads((out / "metrics.json").read_text())["images"] == summary["images"]


def test_metrics_are_the_kernels_numbers(report):
    out, _, samples = report
    metrics = json.loads((out / "metrics.json").read_text())
    model = vitops.load("digits_vit")
    x = preprocess(samples, size=32, family="vit", crop_pct=1.0)
    res = model(x, return_attention=True, return_hidden=True)
    # mean attention distance, averaged over images, per block and head (numpy float64 here)
    d = np.arange(64)
    rows, cols = d // 8, d % 8
    dist = 4 * np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None])
    per_block = np.stack([(np_(a).astype(np.float64)[:, :, 1:, 1:] * dist).sum(-1).mean(-1).mean(0)
                          for a in res["attention"]])
    np.testing.assert_allclose(metrics["mean_attention_distance"]["mean"], per_block, rtol=1e-4)
    rollout = np_(analysis.cls_rollout(res["attention"], grid=(8, 8)))
    for name, r in zip(metrics["images"], rollout):
        np.testing.assert_allclose(metrics["attention_rollout"][name], r, rtol=1e-4, atol=1e-7)
    first = metrics["images"][0]
    np.testing.assert_allclose(metrics["attention_heatmaps"][first],
                               np_(res["attention"][-1])[0, :, 0, 1:].reshape(-1, 8, 8), rtol=1e-5, atol=1e-7)
    pos = model.get_params()["pos_embed"][1:].astype(np.float64)
    pos /= np.linalg.norm(pos, axis=-1, keepdims=True)
    np.testing.assert_allclose(metrics["position_similarity"], pos @ pos.T, atol=1e-5)
    cls = np.stack([np_(h)[:, 0] for h in res["hidden"]], 1).astype(np.float64)
    cls /= np.linalg.norm(cls, axis=-1, keepdims=True)
    for i, name in enumerate(metrics["images"]):
        np.testing.assert_allclose(metrics["cls_trajectory"][name], cls[i] @ cls[i, -1], atol=1e-5)
    cka = np.array(metrics["cka"]["matrix"])
    assert cka.shape == (5, 5)
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-5)
    np.testing.assert_allclose(cka, cka.T, atol=1e-5)
    logits = np_(res["logits"])
    for i, name in enumerate(metrics["images"]):
        top = metrics["predictions"][name]
        assert top[0]["class"] == int(np.argmax(logits[i])) and len(top) == 5
        assert top[0]["label"] == str(top[0]["class"])


def test_threshold_masks_hold_the_mass(report):
    out, _, _ = report
    metrics = json.loads((out / "metrics.json").read_text())
    first = metrics["images"][0]
    maps, masks = np.array(metrics["attention_heatmaps"][first]), np.array(metrics["attention_heatmaps_masks"][first])
    share = (maps * masks).sum((1, 2)) / maps.sum((1, 2))
    assert np.all(share >= 0.6 - 1e-6)


# ---- each figure, checked on its data ----

def test_figures_hold_their_data(rng):
    mean, std = rng.random((4, 3)), rng.random((4, 3))
    fig = plot.mean_attention_distance(mean, std)
    np.testing.assert_allclose(fig.axes[0].collections[0].get_offsets(),
                               np.stack([np.repeat(np.arange(4), 3), mean.reshape(-1)], 1))
    sim = rng.random((12, 12))
    fig = plot.position_similarity(sim, (3, 4))
    mosaic = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(mosaic[4:7, 5:9], sim[5].reshape(3, 4))  # patch (1, 1): rows 1*(3+1), cols 1*(4+1)
    filters = rng.random((5, 4, 4, 3))
    fig = plot.projection_filters(filters)
    for i in range(5):
        np.testing.assert_allclose(fig.axes[i].images[0].get_array(), filters[i])
    cos = rng.random((2, 5))
    fig = plot.cls_trajectory(cos, ["a", "b"])
    for line, row in zip(fig.axes[0].lines, cos):
        np.testing.assert_allclose(line.get_ydata(), row)
    m = rng.random((5, 5))
    np.testing.assert_allclose(plot.cka_matrix(m).axes[0].images[0].get_array(), m)
    image, cls_map = rng.random((32, 32, 3)), rng.random((8, 8))
    fig = plot.rollout_overlays(image[None], cls_map[None], ["x"])
    overlay = fig.axes[1].images[1].get_array()
    assert overlay.shape == (32, 32)
    import cv2

    expected = cv2.resize((cls_map / cls_map.max()).astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(overlay, expected, rtol=1e-6)  # the map, normalised, at image size
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), image)
    heads = rng.random((3, 8, 8))
    fig = plot.attention_heatmaps(image, heads)
    assert len([ax for ax in fig.axes if ax.images]) == 3


# ---- errors ----

def test_unreadable_model_fails_before_any_work(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    with pytest.raises(vitops.WeightFileError, match="truncated or corrupt"):
        analyze(tmp_path / "bad.safetensors", [str(p) for p in hub.shipped_samples()], out, progress=False)
    assert not out.exists()


def test_same_file_name_twice_is_kept_apart(tmp_path):
    samples = [str(p) for p in hub.shipped_samples()]
    copy = tmp_path / "again"
    copy.mkdir()
    shutil.copy(samples[0], copy / os.path.basename(samples[0]))
    summary = analyze("digits_vit", [samples[0], str(copy / os.path.basename(samples[0])), samples[1]],
                      tmp_path / "out", progress=False)
    assert len(set(summary["images"])) == 3
    assert len(summary["attention_rollout"]) == len(summary["cls_trajectory"]) == len(summary["predictions"]) == 3


def test_no_readable_image_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="none of the images"):
        analyze("digits_vit", [str(tmp_path / "missing.png")], tmp_path / "out", progress=False)


def test_cli_default_run_is_offline_and_complete(tmp_path):
    env = {**os.environ, "VITOPS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "vitops", "analyze", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sample digits" in proc.stdout
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert len(metrics["images"]) == len(hub.shipped_samples()) and metrics["cka"] is not None
    # the shipped model reads the shipped digits correctly
    truths = [int(name.split("_")[1].split(".")[0]) for name in metrics["images"]]
    assert [metrics["predictions"][n][0]["class"] for n in metrics["images"]] == truths


# ---- a real browser ----

def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_report_renders_every_image_in_a_browser(report, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("VITOPS_REQUIRE_BROWSER") == "1":
            pytest.fail("no Chromium found, and VITOPS_REQUIRE_BROWSER=1")
        pytest.skip("no Chromium installed (the nox 'browser' session installs it)")
    out, summary, _ = report
    page = (out / "report.html").read_text()
    # A copy of the page with a probe that records, once loaded, how many images decoded.
    probe = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             "document.body.setAttribute('data-loaded', imgs.filter(i => i.complete && i.naturalWidth > 0).length);"
             "document.body.setAttribute('data-total', imgs.length); });</script></body>")
    test_page = tmp_path / "probe.html"
    test_page.write_text(page.replace("</body>", probe))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                           "--dump-dom", test_page.as_uri()], capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert "data-loaded" in dom, proc.stderr[-2000:]
    loaded = int(dom.split('data-loaded="')[1].split('"')[0])
    total = int(dom.split('data-total="')[1].split('"')[0])
    assert total == len(summary["figures"]) == 7
    assert loaded == total
