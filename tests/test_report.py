"""`vitops analyze` and `vitops report`: metrics.json against the kernels run directly on
materialised maps, several models side by side with cross-model CKA, every figure's plotted data,
bad inputs, and the report rendered in a real headless browser.

Tolerances: the in-forward reductions against the materialised kernels, float32 on both sides:
relative 1e-5 (absolute floor 1e-6 for probabilities and CKA).
"""

import json
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from helpers.browser import (
    broken_contents_links,
    check_row,
    choose,
    click_patch,
    figures_loaded,
    report_page,
    shown,
)

import vitops
from vitops import analysis
from vitops.app import plots as plot
from vitops.app.commands import analyze
from vitops.app.summary import strict_json
from vitops.hub import shipped
from vitops.preprocess import preprocess

np_ = keras.ops.convert_to_numpy
MODELS = ["digits_vit", "digits_deit"]


@pytest.fixture(scope="module")
def samples():
    return [str(p) for p in shipped.samples()]


@pytest.fixture(scope="module")
def report(tmp_path_factory, samples):
    out = tmp_path_factory.mktemp("report") / "out"
    bad = out.parent / "not_an_image.png"
    bad.write_text("this is text")
    images = samples[:6] + [str(bad), str(out.parent / "missing.jpg")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. PyTorch's requires_grad warning: none may appear
        summary = analyze(
            MODELS, images, out, batch_size=4, threshold=0.6, show=3, progress=False, explain=True
        )
    return out, summary, samples[:6]


def test_outputs_and_skipped_images(report):
    out, summary, samples = report
    assert summary["images"]["analysed"] == 6 and summary["images"]["total"] == 8
    assert {s["image"] for s in summary["images"]["skipped"]} == {"not_an_image.png", "missing.jpg"}
    for name in ["report.html", "metrics.json"] + summary["figures"]:
        assert (out / name).stat().st_size > 0
    assert set(summary["figures"]) == {
        f"{k}.png"
        for k in (
            "mean_attention_distance",
            "samples",
            "attention_heatmaps",
            "rollout_mean",
            "cls_trajectory",
            "token_mass",
            "token_norms",
            "high_norm_patches",
            "pca_feature_maps",
            "logit_lens",
            "cka",
            "cka_cross",
            "position_similarity",
            "projection_filters",
        )
    }
    assert json.loads((out / "metrics.json").read_text())["models"].keys() == set(MODELS)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".vitops-tmp-")]  # no temporary left


def _materialised(model, images):
    x = preprocess(images, size=32, family=model.config.family, crop_pct=1.0)
    return model(x, return_attention=True, return_hidden=True)


@pytest.mark.parametrize("name", MODELS)
def test_metrics_are_the_materialised_kernels_numbers(report, name):
    out, _, samples = report
    metrics = json.loads((out / "metrics.json").read_text())["models"][name]
    model = vitops.load(name)
    prefix = model.config.num_prefix_tokens
    res = _materialised(model, samples)
    maps = res["attention"]
    # mean attention distance over all 6 images, per block and head (numpy float64 here)
    d = np.arange(64)
    rows, cols = d // 8, d % 8
    dist = 4 * np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None])
    per_image = np.stack(
        [(np_(a).astype(np.float64)[:, :, prefix:, prefix:] * dist).sum(-1).mean(-1) for a in maps], axis=1
    )  # (images, blocks, heads)
    np.testing.assert_allclose(metrics["distance"]["mean"], per_image.mean(0), rtol=1e-5)
    np.testing.assert_allclose(metrics["distance"]["std"], per_image.std(0), rtol=1e-4, atol=1e-5)
    rollout = np_(analysis.cls_rollout(maps, num_prefix_tokens=prefix, grid=(8, 8)))
    np.testing.assert_allclose(metrics["rollout"]["mean"], rollout.mean(0), rtol=1e-5, atol=1e-7)
    heat = np_(analysis.attention_heatmaps(maps, grid=(8, 8), num_prefix_tokens=prefix))
    np.testing.assert_allclose(metrics["cls_attention"]["mean"], heat.mean(0), rtol=1e-5, atol=1e-7)
    # samples: 3 of 6 images spread evenly (positions 0, 4, 7 of the 8 given; 7 is not readable)
    assert [s["position"] for s in metrics["samples"].values()] == [0, 4]
    for sample in metrics["samples"].values():
        i = sample["position"]
        np.testing.assert_allclose(sample["rollout"], rollout[i], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(sample["cls_attention"], heat[i], rtol=1e-5, atol=1e-7)
        mass = (np.array(sample["cls_attention"]) * np.array(sample["cls_attention_masks"])).sum((1, 2))
        assert np.all(mass >= 0.6 * np.array(sample["cls_attention"]).sum((1, 2)) - 1e-6)
        assert sample["predictions"][0]["class"] == int(np.argmax(np_(res["logits"])[i]))
    cls = np.stack([np_(h)[:, 0] for h in res["hidden"]], 1).astype(np.float64)
    cls /= np.linalg.norm(cls, axis=-1, keepdims=True)
    cos = (cls * cls[:, -1:]).sum(-1)
    np.testing.assert_allclose(metrics["cls_trajectory"]["mean"], cos.mean(0), rtol=1e-5, atol=1e-6)
    cka = analysis.MinibatchCKA()
    for s in (slice(0, 4), slice(4, 6)):  # the run's batches of 4; the last (2 images) is too small
        if s.stop - s.start >= 4:
            cka.update([h[s] for h in res["hidden"]])
    np.testing.assert_allclose(metrics["cka"]["matrix"], cka.result(), rtol=1e-5, atol=1e-6)
    # token norms: every token of every block's output, by group (numpy float64)
    norms = np.stack([np.linalg.norm(np_(h).astype(np.float64), axis=-1) for h in res["hidden"]], 1)
    tn = metrics["token_norms"]
    groups = {"class": slice(0, prefix), "patches": slice(prefix, None)}  # class + distillation
    assert tn["groups"] == list(groups)
    for j, part in enumerate(groups.values()):
        w = norms[:, :, part].transpose(1, 0, 2).reshape(norms.shape[1], -1)
        np.testing.assert_allclose(np.array(tn["mean"])[:, j], w.mean(1), rtol=1e-5)
        np.testing.assert_allclose(np.array(tn["max"])[:, j], w.max(1), rtol=1e-5)
    per_max = np.load(out / "per_image" / f"{name}_norm_max.npy")[:6]  # positions 0-5 analysed
    np.testing.assert_allclose(per_max, norms[:, :, prefix:].max(-1), rtol=1e-5)
    # logit lens: the model's own final norm and head on every block's tokens
    p = model.get_params()
    lens = []
    for h in res["hidden"]:
        t = np_(h).astype(np.float64)[:, :prefix]
        t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + model.config.layer_norm_eps)
        t = t * p["norm.scale"] + p["norm.bias"]
        logits = t[:, 0] @ p["head.kernel"] + p["head.bias"]
        if model.config.distilled:
            logits = (logits + t[:, 1] @ p["head_dist.kernel"] + p["head_dist.bias"]) / 2
        lens.append(logits)
    lens = np.stack(lens, 1)  # (images, L + 1, K)
    final = lens[:, -1].argmax(-1)
    agree = (lens.argmax(-1) == final[:, None]).mean(0)
    probs = np.exp(lens - lens.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True))[np.arange(6), :, final]  # (images, L + 1)
    np.testing.assert_allclose(metrics["logit_lens"]["top1_agreement"]["mean"], agree, atol=1e-9)
    np.testing.assert_allclose(
        metrics["logit_lens"]["final_class_probability"]["mean"], probs.mean(0), rtol=1e-4
    )
    # PCA: the last block's patch tokens after the final norm, all 6 images at once
    t = np_(res["hidden"][-1]).astype(np.float64)
    t = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + model.config.layer_norm_eps)
    t = (t * p["norm.scale"] + p["norm.bias"])[:, prefix:].reshape(-1, model.config.dim)
    values = np.linalg.eigvalsh(np.cov(t, rowvar=False, bias=True))[::-1]
    pca = metrics["pca"]
    assert pca["count"] == len(t) == 6 * 64
    np.testing.assert_allclose(pca["variance"], values[:16], rtol=1e-4, atol=1e-7 * values[0])
    np.testing.assert_allclose(
        pca["explained_variance_ratio"], values[:16] / values.sum(), rtol=1e-4, atol=1e-8
    )
    per_lens = np.load(out / "per_image" / f"{name}_lens.npy")[:6]
    np.testing.assert_allclose(per_lens, probs, rtol=1e-4, atol=1e-6)
    pos = model.get_params()["pos_embed"][prefix:].astype(np.float64)
    pos /= np.linalg.norm(pos, axis=-1, keepdims=True)
    refs = metrics["position_similarity_patches"]
    np.testing.assert_allclose(metrics["position_similarity"], (pos @ pos.T)[refs], atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_explain_draws_each_sample_images_gradient_rollout(report, name):
    out, _, samples = report
    metrics = json.loads((out / "metrics.json").read_text())["models"][name]
    model = vitops.load(name)
    x = preprocess(samples, size=32, family=model.config.family, crop_pct=1.0)
    for sample in metrics["samples"].values():
        i = sample["position"]
        want = np_(analysis.gradient_rollout(model, x[i : i + 1]))[0]
        relevance = sample["relevance"]
        np.testing.assert_allclose(relevance["map"], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
        assert relevance["class"] == sample["predictions"][0]["class"]
        assert relevance["label"] == sample["predictions"][0]["label"]
        # class-specific: not the rollout, which is the same whatever the class
        assert np.abs(np.array(relevance["map"]) - np.array(sample["rollout"])).max() > 1e-3


def test_cross_model_cka_is_minibatch_cka_of_both_models(report):
    out, _, samples = report
    metrics = json.loads((out / "metrics.json").read_text())
    (entry,) = metrics["cross_model_cka"]
    assert entry["models"] == MODELS
    ha, hb = (_materialised(vitops.load(m), samples)["hidden"] for m in MODELS)
    cka = analysis.MinibatchCKA()
    cka.update([h[:4] for h in ha], [h[:4] for h in hb])
    np.testing.assert_allclose(entry["matrix"], cka.result(), rtol=1e-5, atol=1e-6)
    assert np.array(entry["matrix"]).shape == (5, 5)


def test_per_image_files(report):
    out, summary, samples = report
    for name in MODELS:
        rows = (out / "per_image" / f"{name}.csv").read_text().splitlines()
        assert len(rows) == 1 + 6 and rows[0].startswith("position,image,top1_class")
        rollout = np.load(out / "per_image" / f"{name}_rollout.npy")
        assert rollout.shape == (8, 8, 8)
        assert np.isnan(rollout[6:]).all() and np.isfinite(rollout[:6]).all()  # the two unreadable ones
        top = np.load(out / "per_image" / f"{name}_top.npy")
        truths = [int(os.path.basename(s).split("_")[1].split(".")[0]) for s in samples]
        assert list(top[:6, 0]) == truths  # the shipped models read the shipped digits correctly


def test_strict_json_turns_nan_into_null():
    value, bad = strict_json(
        {"a": np.array([1.0, np.nan, np.inf]), "b": [np.float32(2.5)], "c": float("nan")}
    )
    assert value == {"a": [1.0, None, None], "b": [2.5], "c": None} and bad == 3
    json.dumps(value, allow_nan=False)


def test_nan_images_give_valid_json_and_say_so(tmp_path):
    images = [np.full((32, 32, 3), np.nan, np.float32)] + [np.zeros((32, 32, 3), np.uint8)] * 4
    summary = analyze("digits_vit", images, tmp_path / "out", batch_size=5, progress=False)
    text = (tmp_path / "out" / "metrics.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.json"))
    assert summary["non_finite_values"] > 0


# ---- each figure, checked on its data ----


@pytest.mark.parametrize("models,explain", [(["digits_vit"], False), (MODELS, True)])
def test_no_text_is_cut_off_at_a_figure_edge(samples, models, explain):
    """Every title, label and legend of every figure lies inside the figure as drawn: the one
    model, no --explain offline default (narrow figures, long titles) and two models explained."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from vitops.app.figures import figures
    from vitops.app.run import run_study
    from vitops.app.settings import RunSettings
    from vitops.app.summary import summary_of

    study = run_study(models, samples[:3], settings=RunSettings(show=3, explain=explain), progress=False)
    with matplotlib.rc_context({"text.parse_math": False}):
        for key, fig in figures(study, summary_of(study)).items():
            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            drawn = fig.get_tightbbox(canvas.get_renderer())  # inches: what is drawn, titles included
            w, h = fig.get_size_inches()
            assert (
                drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= w + 0.01 and drawn.y1 <= h + 0.01
            ), (
                key,
                drawn.bounds,
                (w, h),
            )


def test_figures_hold_their_data(rng):
    mean, std = rng.random((4, 3)), rng.random((4, 3))
    fig = plot.mean_attention_distance(mean, std)
    np.testing.assert_allclose(
        fig.axes[0].collections[0].get_offsets(), np.stack([np.repeat(np.arange(4), 3), mean.reshape(-1)], 1)
    )
    sim = rng.random((12, 12))
    fig = plot.position_similarity(sim, (3, 4))
    mosaic = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(
        mosaic[4:7, 5:9], sim[5].reshape(3, 4)
    )  # patch (1, 1): rows 1*(3+1), cols 1*(4+1)
    # a 40 x 20 grid: the tiles of a 16 x 16 lattice, each the full row at its lattice place
    from vitops.analysis import reference_patches

    refs = reference_patches((40, 20))
    assert len(refs) == 256 and refs[0] == 0 and refs[-1] == 40 * 20 - 1
    sim = rng.random((256, 800))
    mosaic = plot.position_similarity(sim, (40, 20), patches=refs).axes[0].images[0].get_array()
    assert mosaic.shape == (16 * 41, 16 * 21)
    np.testing.assert_allclose(mosaic[41 : 41 + 40, 21 * 2 : 21 * 2 + 20], sim[16 + 2].reshape(40, 20))
    filters = rng.random((10, 4, 4, 3))
    tiles = plot.projection_filters(filters).axes[0].images[0].get_array()
    np.testing.assert_allclose(tiles[0:4, 0:4], filters[0], rtol=1e-6)
    np.testing.assert_allclose(tiles[5:9, 5:9], filters[9], rtol=1e-6)  # filter 9: row 1, column 1
    cos = rng.random((2, 5))
    fig = plot.cls_trajectory(cos, ["a", "b"], mean=cos.mean(0), std=cos.std(0))
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), cos.mean(0))
    for line, row in zip(fig.axes[0].lines[1:], cos):
        np.testing.assert_allclose(line.get_ydata(), row)
    m = rng.random((5, 4))
    np.testing.assert_allclose(plot.cka_matrix(m).axes[0].images[0].get_array(), m)
    images, rollout, heat = rng.random((2, 32, 32, 3)), rng.random((2, 8, 8)), rng.random((2, 8, 8))
    fig = plot.sample_overlays(
        [images, images], [rollout, rollout * 2], [heat, heat], [["a", "a"], ["b", "b"]], ["m1", "m2"]
    )
    axes = fig.axes
    assert len(axes) == 2 * 4
    import cv2

    overlay = axes[4 + 1].images[1].get_array()  # row 1 (image "b"), model m1, CLS attention
    expected = cv2.resize(
        (heat[1] / heat[1].max()).astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR
    )
    np.testing.assert_allclose(overlay, expected, rtol=1e-6)  # the map, normalised, at image size
    np.testing.assert_allclose(axes[4 + 1].images[0].get_array(), images[1])
    heads = rng.random((3, 8, 8))
    fig = plot.attention_heatmaps(images[0], heads)
    assert len([ax for ax in fig.axes if ax.images]) == 3
    # a large image is drawn reduced, its map at the reduced size (memory while rendering)
    big = rng.random((1, 1000, 600, 3)).astype(np.float32)
    fig = plot.sample_overlays([big], [rollout[:1]], [heat[:1]], [["a"]], ["m"])
    shown, overlay = fig.axes[0].images[0].get_array(), fig.axes[0].images[1].get_array()
    assert shown.shape == (plot.DISPLAY_PIXELS, 230, 3) and overlay.shape == shown.shape[:2]
    np.testing.assert_allclose(shown.mean(), big.mean(), rtol=1e-3)  # area averaging


# ---- errors and the output folder ----


def test_unreadable_model_fails_before_any_work(tmp_path, samples):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    with pytest.raises(vitops.WeightFileError, match="truncated or corrupt"):
        analyze(tmp_path / "bad.safetensors", samples, out, progress=False)
    assert not out.exists() and not list(tmp_path.glob(".vitops-tmp-*"))


def test_failed_run_leaves_the_previous_report(tmp_path, samples):
    out = tmp_path / "out"
    analyze("digits_vit", samples[:4], out, progress=False, show=1)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(vitops.AnalysisError, match="none of the"):
        analyze("digits_vit", [str(tmp_path / "missing.png")], out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not list(tmp_path.glob(".vitops-tmp-*"))


def test_same_file_name_twice_is_kept_apart(tmp_path, samples):
    copy = tmp_path / "again"
    copy.mkdir()
    shutil.copy(samples[0], copy / os.path.basename(samples[0]))
    analyze(
        "digits_vit",
        [samples[0], str(copy / os.path.basename(samples[0])), samples[1]],
        tmp_path / "out",
        progress=False,
    )
    rows = (tmp_path / "out" / "per_image" / "digits_vit.csv").read_text().splitlines()[1:]
    assert len({r.split(",")[1] for r in rows}) == 3


def test_cli_default_run_is_offline_and_complete(tmp_path):
    env = {**os.environ, "VITOPS_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "vitops", "analyze", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sample digits" in proc.stdout
    assert "images/s" in proc.stdout  # the progress bar's throughput (and its time left)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["images"]["analysed"] == len(shipped.samples())
    assert metrics["models"]["digits_vit"]["cka"] is not None


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from vitops.app.cli import main

    monkeypatch.setenv("VITOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def run(*args):
        code = main([*map(str, args)])
        err = capsys.readouterr().err.strip().splitlines()
        return code, err[-1] if err else ""

    (tmp_path / "file").write_text("x")
    code, line = run("analyze", "--out", tmp_path / "file")
    assert code == 2 and "not a folder" in line
    code, line = run("analyze", "--batch-size", "0", "--out", tmp_path / "o")
    assert code == 2 and "batch size" in line
    code, line = run("analyze", "--model", tmp_path / "nope.safetensors", "--out", tmp_path / "o")
    assert code == 2 and "nope.safetensors" in line
    code, line = run("analyze", "--shard", "4/4", "--out", tmp_path / "o")
    assert code == 2 and "--shard" in line
    code, line = run("analyze", "--norm-threshold", "-1", "--out", tmp_path / "o")
    assert code == 2 and "norm threshold must be a positive number" in line
    code, line = run("analyze", "--pca-step", "99", "--out", tmp_path / "o")  # digits_vit: 4 blocks
    assert code == 2 and "pca step 99 is past the last block" in line
    code, line = run("report", tmp_path / "file", "--out", tmp_path / "o")
    assert code == 2 and "file" in line and "state" in line
    os.chmod(tmp_path, 0o500)  # a folder --out cannot be created in (root can write anyway)
    try:
        if not os.access(tmp_path, os.W_OK):
            code, line = run("analyze", "--out", tmp_path / "new")
            assert code == 2 and "permission denied" in line
    finally:
        os.chmod(tmp_path, 0o700)
    if keras.config.backend() != "jax":
        code, line = run("analyze", "--devices", "2", "--out", tmp_path / "o")
        assert code == 2 and "JAX" in line
    assert not (tmp_path / "o").exists()


# ---- a real browser ----


def render_in_browser(page_path, tmp_path=None):
    """(figures loaded, figures on the page) of a report opened in headless Chromium; fails on a
    console error, a network request or a contents link without its target."""
    with report_page(page_path) as page:
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        loaded, total = figures_loaded(page)
        assert broken_contents_links(page) == []
    return loaded, total


def test_report_renders_every_image_in_a_browser(report, tmp_path):
    out, summary, _ = report
    loaded, total = render_in_browser(out / "report.html", tmp_path)
    assert total == len(summary["figures"]) == 14  # token_norms.png, pca_feature_maps.png among them
    assert loaded == total


# ---- two real-size models, each preprocessed its own way ----


@pytest.fixture(scope="module")
def two_resolutions(tmp_path_factory):
    """A timm ViT-S/16 at 224 px and a DINO ViT-S/16 at 320 px (random weights, converted) in
    one run over four photographs; every array fed to each model is recorded."""
    import cv2
    import matplotlib.cbook
    from helpers.timm_reference import make_timm, save_state_dict

    tmp = tmp_path_factory.mktemp("two")
    photo = cv2.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # 600 x 512
    paths = []
    for k, img in enumerate([photo, photo[:, ::-1], photo[40:520, 10:], photo[::-1][:450]]):
        paths.append(tmp / f"photo_{k}.png")
        cv2.imwrite(str(paths[-1]), img)
    models = []
    for k, arch in enumerate(["vit_small_patch16_224", "vit_small_patch16_224.dino"]):
        save_state_dict(
            make_timm(arch, seed=k, num_classes=0 if "dino" in arch else 1000), tmp / f"ck{k}.safetensors"
        )
        vitops.convert(tmp / f"ck{k}.safetensors", tmp / f"{arch.replace('.', '_')}.safetensors", arch=arch)
        model = vitops.load(tmp / f"{arch.replace('.', '_')}.safetensors")
        fed, infer = [], model.infer

        def recording(x, infer=infer, fed=fed, **kw):
            if kw.get("reductions") is not None:  # the analysis pass (not the explorer's)
                fed.append(np.asarray(x))
            return infer(x, **kw)

        model.infer = recording
        models.append((model, fed))
    out = tmp / "out"
    summary = analyze(
        [m for m, _ in models],
        [str(p) for p in paths],
        out,
        batch_size=4,
        show=2,
        preprocessing=[None, {"size": (320, 320)}],
        progress=False,
    )
    return out, summary, paths, [np.concatenate(fed) for _, fed in models]


def _timm_eval(path, size, crop_pct, mean, std):
    """timm's eval transform on a file, written out here: short side floor(size / crop_pct)
    (area filter when shrinking), long side truncated, centre crop rounded, normalised."""
    import math

    import cv2

    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    short = math.floor(size / crop_pct)
    nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    assert short < min(h, w)  # shrinking: the area filter on the whole image
    resized = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA)
    top, left = int(round((nh - size) / 2)), int(round((nw - size) / 2))
    x = resized[top : top + size, left : left + size].astype(np.float64) / 255
    return (x - np.array(mean)) / np.array(std)


def test_each_model_is_fed_its_own_preprocessing(two_resolutions):
    out, summary, paths, (vit_in, dino_in) = two_resolutions
    assert vit_in.shape == (4, 224, 224, 3) and dino_in.shape == (4, 320, 320, 3)
    import timm

    # Each as timm's pretrained config says (conversion records it): Google ViT to [-1, 1],
    # DINO with the ImageNet mean and std; the DINO at 320 px, with the same crop_pct.
    vit_cfg, dino_cfg = (
        timm.models.get_pretrained_cfg(a) for a in ("vit_small_patch16_224", "vit_small_patch16_224.dino")
    )
    assert vit_cfg.mean != dino_cfg.mean
    for k, path in enumerate(paths):
        want = _timm_eval(path, 224, vit_cfg.crop_pct, vit_cfg.mean, vit_cfg.std)
        np.testing.assert_allclose(vit_in[k], want, atol=2e-5)
        want = _timm_eval(path, 320, dino_cfg.crop_pct, dino_cfg.mean, dino_cfg.std)
        np.testing.assert_allclose(dino_in[k], want, atol=2e-5)
    vit, dino = summary["models"].values()
    assert vit["preprocessing"]["crop_pct"] == vit_cfg.crop_pct and vit["preprocessing"]["size"] == [224, 224]
    assert dino["preprocessing"]["crop_pct"] == dino_cfg.crop_pct and dino["preprocessing"]["size"] == [
        320,
        320,
    ]
    assert np.array(dino["rollout"]["mean"]).shape == (20, 20)  # 320 / 16 patches a side
    assert np.array(vit["rollout"]["mean"]).shape == (14, 14)
    (cross,) = json.loads((out / "metrics.json").read_text())["cross_model_cka"]
    assert np.array(cross["matrix"]).shape == (13, 13)
    # ImageNet-1k head: class names in the predictions
    first = next(iter(vit["samples"].values()))["predictions"][0]
    assert first["label"] != str(first["class"]) and first["label"].strip()


def test_two_resolutions_report_renders_in_a_browser(two_resolutions, tmp_path):
    out, summary, _, _ = two_resolutions
    loaded, total = render_in_browser(out / "report.html", tmp_path)
    assert total == len(summary["figures"]) == 14  # token_norms.png, pca_feature_maps.png among them
    assert loaded == total


def test_two_resolutions_explorer_shows_each_models_attention(two_resolutions):
    """The explorer over two grids (14 x 14 and 20 x 20 patches): one click picks the same place
    in both; each panel shows its model's attention (last block, head 4) of that patch."""
    out, summary, paths, fed = two_resolutions
    bits = summary["explorer"]["bits"]
    names = [p.name for p in paths]
    models = [
        vitops.load(out.parent / f"{a}.safetensors")
        for a in ("vit_small_patch16_224", "vit_small_patch16_224_dino")
    ]
    with report_page(out / "report.html") as page:
        page.wait_for_selector("#explorer[data-ready]")
        image = page.locator("#ex-image option").nth(1).text_content()
        choose(page, "image", image)
        choose(page, "head", "head 4")
        click_patch(page, 0, 5, 9, (14, 14))
        for m, model in enumerate(models):
            rows, cols = model.config.grid_size if m == 0 else (20, 20)
            q = 1 + int(5.5 / 14 * rows) * cols + int(9.5 / 14 * cols)
            got = shown(page, m)
            assert int(got["query"]) == q and got["block"] == "12"
            x = fed[m][names.index(image)]
            attention = np.asarray(model.infer(x[None], return_attention=True)["attention"][11], np.float64)[
                0
            ]
            check_row(got, attention[3, q], 1, (1 << bits) - 1)


@pytest.fixture(scope="module")
def faithful(tmp_path_factory, samples):
    out = tmp_path_factory.mktemp("faithful") / "out"
    summary = analyze(
        "digits_vit", samples[:3], out, batch_size=4, show=2, explain=True, faithfulness=True, progress=False
    )
    return out, summary, samples[:3]


def test_faithfulness_and_integrated_gradients_in_the_report(faithful):
    """--faithfulness: each sample image's areas are `deletion_insertion` of the drawn maps on
    that image; --explain's integrated gradients are `integrated_gradients` with its error."""
    from vitops.analysis import deletion_insertion, integrated_gradients
    from vitops.app.explain import FAITHFULNESS_MAPS, FAITHFULNESS_STEPS, IG_STEPS

    _, summary, images = faithful
    m = summary["models"]["digits_vit"]
    assert "faithfulness.png" in summary["figures"]
    f = m["faithfulness"]
    assert (
        f["steps"] == FAITHFULNESS_STEPS and f["images"] == 2 and list(f["maps"]) == list(FAITHFULNESS_MAPS)
    )
    model = vitops.load("digits_vit")
    x = preprocess(images, size=32, family=model.config.family, crop_pct=1.0)
    for s in m["samples"].values():
        i = s["position"]
        for key, drawn in (("rollout", s["rollout"]), ("relevance", s["relevance"]["map"])):
            ref = deletion_insertion(model, x[i : i + 1], np.asarray(drawn)[None], steps=FAITHFULNESS_STEPS)
            assert s["faithfulness"][key]["deletion_auc"] == pytest.approx(ref["deletion_auc"][0], abs=1e-5)
            assert s["faithfulness"][key]["insertion_auc"] == pytest.approx(ref["insertion_auc"][0], abs=1e-5)
        ig, comp = integrated_gradients(model, x[i : i + 1], steps=IG_STEPS, return_completeness=True)
        ig_s = s["integrated_gradients"]
        np.testing.assert_allclose(ig_s["map"], np_(ig)[0], rtol=1e-4, atol=1e-6)
        assert ig_s["completeness_error"] == pytest.approx(comp["error"][0], rel=1e-3, abs=1e-5)
    means = {k: v["deletion_auc"] for k, v in f["maps"].items()}
    per = [s["faithfulness"]["rollout"]["deletion_auc"] for s in m["samples"].values()]
    assert means["rollout"] == pytest.approx(np.mean(per), rel=1e-6)


def test_faithfulness_report_renders_in_a_browser(faithful, tmp_path):
    out, summary, _ = faithful
    loaded, total = render_in_browser(out / "report.html", tmp_path)
    assert "faithfulness.png" in summary["figures"] and "pca_feature_maps.png" in summary["figures"]
    assert total == len(summary["figures"]) and loaded == total
