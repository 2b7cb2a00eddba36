"""The report's attention explorer and its page, in a real browser (Playwright driving Debian's
Chromium, `helpers.browser`): a patch clicked, a block, a head and a query picked, the displayed
map read back and compared with the model's own attention for that image, block, head and
query (within the quantisation step the page states); the rollout option against
`analysis.attention_rollout`; tooltips against metrics.json; hostile file names and labels
shown as text. The quantisation and block parsing are checked without a browser too.
"""

import os
import shutil

import numpy as np
import pytest
from helpers.browser import (
    after,
    broken_contents_links,
    check_drawn,
    check_row,
    choose,
    click_patch,
    figures_loaded,
    model_attention,
    report_page,
    shown,
)

import vitops
from vitops import analysis
from vitops.app import explorer
from vitops.app.commands import analyze
from vitops.app.run import Preparer
from vitops.errors import AnalysisError
from vitops.hub import shipped
from vitops.io.weight_file import save

HOSTILE = "<img src=x onerror=alert(1)>"


# ---- without a browser ----


def test_quantise_is_within_a_step(rng):
    rows = rng.dirichlet(np.full(50, 0.3), size=40).astype(np.float32)
    rows[:3] *= np.array([1e-6, 1e-9, 3e-38], np.float32)[:, None]  # a prefix token took (nearly) all
    for bits in explorer.BITS:
        codes, top = explorer.quantise(rows, bits)
        levels = (1 << bits) - 1
        assert codes.max() <= levels and codes.dtype == np.uint8
        np.testing.assert_array_equal(top, rows.max(-1))
        back = codes / levels * top.astype(np.float64)[:, None]
        assert (np.abs(back - rows) <= top[:, None] / levels / 2 * (1 + 1e-6)).all()
        assert (np.abs(back - rows) > top[:, None] / levels / 4).any()  # it does round


def test_explore_blocks_are_parsed_and_checked():
    assert explorer.parse_blocks(" 12,1,6,6 ") == "1,6,12"
    assert explorer.blocks_of("1,6,12", 12) == (0, 5, 11)
    assert explorer.blocks_of("last", 4) == (3,) and explorer.blocks_of("all", 3) == (0, 1, 2)
    assert explorer.blocks_of("none", 3) == ()
    for bad in ("0", "x", "1,,2", "", 3):
        with pytest.raises(AnalysisError, match="explore blocks"):
            explorer.parse_blocks(bad)
    with pytest.raises(AnalysisError, match="has 4 blocks"):
        explorer.blocks_of("5", 4, "digits_vit")


def test_too_large_maps_are_left_out_with_the_reason(tmp_path):
    out = tmp_path / "out"
    summary = analyze(
        "digits_vit", [str(p) for p in shipped.samples()[:2]], out, report_mb=0.001, progress=False
    )
    assert "report-mb" in summary["explorer"]["omitted"]
    assert "id='explorer-data'" not in (out / "report.html").read_text()
    assert "attention explorer is left out" in (out / "report.html").read_text()
    with report_page(out / "report.html") as page:
        assert broken_contents_links(page) == []
        assert "report-mb" in page.locator("#explorer").text_content()


def test_a_model_whose_maps_are_too_large_is_named(tmp_path):
    """digits_vit's maps are kept, a ViT-Ti/16's at 224 px (197 tokens) are not at this
    --report-mb: the page says which and why."""
    from helpers.timm_reference import timm_twin

    _, tiny = timm_twin(tmp_path, "vit_tiny_patch16_224")
    images = [str(p) for p in shipped.samples()[:2]]
    summary = analyze(
        ["digits_vit", str(tiny)], images, tmp_path / "out", show=2, report_mb=0.02, progress=False
    )
    omitted = summary["explorer"]["omitted"]
    assert "vit_tiny_patch16_224: its sample images' maps take 0.8 MB as float16" in omitted
    assert "digits_vit:" not in omitted


# ---- two models in a browser ----


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """digits_vit and a digits_deit whose class names are markup, over six digits and one with
    markup in its file name; blocks 2 and 4 explored."""
    tmp = tmp_path_factory.mktemp("explorer")
    deit = vitops.load("digits_deit")
    labelled = tmp / "deit.safetensors"
    prep = Preparer.for_model(deit).preprocessing
    save(
        labelled,
        deit.get_params(),
        deit.config,
        labels=[f"{HOSTILE} {k}" for k in range(10)],
        preprocessing=prep,
    )
    images = [str(p) for p in shipped.samples()[:6]]
    hostile = tmp / f"{HOSTILE}.png"
    shutil.copy(images[0], hostile)
    images = [str(hostile), *images]
    out = tmp / "out"
    summary = analyze(
        ["digits_vit", str(labelled)], images, out, show=4, explore_blocks="2,4", progress=False
    )
    models = [vitops.load("digits_vit"), vitops.load(labelled)]
    return out, summary, models, {os.path.basename(p): p for p in images}


def test_clicked_patch_block_and_head_show_the_models_attention(run, tmp_path):
    out, summary, models, paths = run
    assert summary["explorer"]["bits"] == 8 and summary["explorer"]["blocks"] == {
        label: [2, 4] for label in summary["models"]
    }
    with report_page(out / "report.html") as page:
        page.wait_for_selector("#explorer[data-ready]")
        image = page.locator("#ex-image option").nth(2).text_content()
        choose(page, "image", image)
        choose(page, "block", "block 2")
        choose(page, "head", "head 2")
        for m, model in enumerate(models):
            grid, prefix = model.config.grid_size, model.config.num_prefix_tokens
            row, col = (2, 5) if m == 0 else (6, 1)
            click_patch(page, m, row, col, grid)
            attention = model_attention(model, paths[image])
            q = prefix + row * grid[1] + col
            for k in range(len(models)):  # the click picks the same place in every model
                got = shown(page, k)
                assert got["block"] == "2" and got["head"] == "1" and got["map"] == "attention"
            got = shown(page, m)
            assert int(got["query"]) == q
            check_row(got, attention[1][1, q], prefix)
            check_drawn(page, m, got["values"], grid)
            # the head mean, and the last block, of the same query
            choose(page, "head", "mean of the heads")
            check_row(shown(page, m), attention[1][:, q].mean(0), prefix)
            choose(page, "block", "block 4")
            check_row(shown(page, m), attention[3][:, q].mean(0), prefix)
            choose(page, "block", "block 2")
            choose(page, "head", "head 2")
        # a prefix token as the query: the distillation token exists in one model only
        choose(page, "query", "distillation token")
        attention = model_attention(models[1], paths[image])
        check_row(shown(page, 1), attention[1][1, 1], 2)
        assert "no distillation token" in page.locator("#ex-panels figcaption").nth(0).text_content()
        choose(page, "query", "class token")
        for m, model in enumerate(models):
            check_row(
                shown(page, m), model_attention(model, paths[image])[1][1, 0], model.config.num_prefix_tokens
            )
        # the rollout through all blocks, from a patch
        choose(page, "map", "rollout through all blocks")
        click_patch(page, 0, 3, 3, models[0].config.grid_size)
        for m, model in enumerate(models):
            attention = model_attention(model, paths[image])
            joint = np.asarray(analysis.attention_rollout([a[None] for a in attention]), np.float64)[0]
            prefix = model.config.num_prefix_tokens
            got = shown(page, m)
            assert got["map"] == "rollout" and int(got["query"]) == prefix + 3 * 8 + 3
            check_row(got, joint[prefix + 3 * 8 + 3], prefix)
        # the keyboard moves the query patch
        page.locator("#ex-panels canvas").nth(0).focus()
        after(page, lambda: page.keyboard.press("ArrowRight"))
        assert int(shown(page, 0)["query"]) == 1 + 3 * 8 + 4
        screenshot = os.environ.get("VITOPS_SCREENSHOT")
        if screenshot:  # the README's picture (see README, "The report")
            choose(page, "map", "attention of one block")
            choose(page, "query", "a patch (click or arrow keys)")
            click_patch(page, 0, 2, 5, models[0].config.grid_size)
            page.locator("#explorer").screenshot(path=screenshot)


def test_the_page_loads_whole_offline_and_reads_well(run):
    out, summary, _, _ = run
    with report_page(out / "report.html") as page:  # no console error, no request, no dialog
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        loaded, total = figures_loaded(page)
        assert loaded == total == len(summary["figures"])
        assert broken_contents_links(page) == []
        contents = page.locator("nav a").all_text_contents()
        assert "Attention explorer" in contents and "CKA between models" in contents
        assert not any("_" in c for c in contents)  # headings for people, not identifiers
        # the model table states the preprocessing in words
        assert "minus mean (0.5, 0.5, 0.5)" in page.locator("#models table").text_content()


def test_tooltips_show_the_numbers_behind_the_figures(run):
    out, summary, _, _ = run
    cka = np.array(summary["models"]["digits_vit"]["cka"]["matrix"])
    with report_page(out / "report.html") as page:
        assert page.locator("#cka .region").count() == 2 * cka.size  # two models' matrices
        regions = page.locator("#cka .region[data-tip^='digits_vit']")
        for k in (0, 7, cka.size - 1):
            regions.nth(k).hover()
            text = page.locator("#tooltip").text_content()
            i, j = divmod(k, cka.shape[1])
            assert f"CKA {cka[i, j]:.3f}" in text
            assert ("embeddings" if i == 0 else f"block {i}") in text
        # the keyboard: the chart is one tab stop, the arrow keys walk its values
        page.locator("#cls_trajectory .chart").focus()
        page.keyboard.press("ArrowRight")
        text = page.locator("#tooltip").text_content()
        mean = summary["models"]["digits_vit"]["cls_trajectory"]["mean"][0]
        assert text.startswith("embeddings:") and f"{mean:.3f}" in text


def test_file_names_and_labels_with_markup_are_shown_as_text(run):
    out, summary, _, _ = run
    text = (out / "report.html").read_text()
    assert HOSTILE not in text  # escaped everywhere: HTML, attributes, the embedded data
    with report_page(out / "report.html") as page:  # an alert would be a dialog: fails there
        page.wait_for_selector("#explorer[data-ready]")
        assert page.locator("img[src='x']").count() == 0
        assert page.get_by_text(f"{HOSTILE}.png").count() >= 2  # the predictions table, the image menu
        assert page.locator("#predictions").get_by_text(HOSTILE, exact=False).count() >= 1
        options = page.locator("#ex-image option").all_text_contents()
        assert f"{HOSTILE}.png" in options


def test_dark_scheme_follows_the_system(run):
    out, _, _, _ = run
    colours = {}
    for dark in (False, True):
        with report_page(out / "report.html", dark=dark) as page:
            colours[dark] = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert colours[False] == "rgb(255, 255, 255)" and colours[True] != colours[False]


@pytest.mark.slow
def test_two_vit_b_models_and_eight_images_stay_under_5_mb(tmp_path):
    """The default explorer (the last block, every head and query, and the rollout) of two
    ViT-B/16 at 224 px (every tensor randomised: maps as noisy as they come, the hardest to
    compress) over eight sample photographs: report.html within --report-mb (4.5 MB)."""
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the page's size does not depend on the backend: measured once, on jax")
    import cv2
    import matplotlib.cbook
    import sklearn.datasets
    from helpers.timm_reference import timm_twin

    sources = [matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)]
    sources += list(sklearn.datasets.load_sample_images().filenames)
    images = []
    for k in range(8):
        img = cv2.imread(str(sources[k % 3]))
        images.append(str(tmp_path / f"photo_{k}.png"))
        cv2.imwrite(images[-1], img[:, ::-1] if k >= 3 else img)
    files = []
    for seed in (0, 1):  # two models of different weights
        (tmp_path / f"m{seed}").mkdir()
        files.append(str(timm_twin(tmp_path / f"m{seed}", "vit_base_patch16_224", seed=seed)[1]))
    summary = analyze(files, images, tmp_path / "out", progress=False)
    size = (tmp_path / "out" / "report.html").stat().st_size
    assert size < 4.5e6
    ex = summary["explorer"]
    assert ex["bits"] in explorer.BITS and len(ex["blocks"]) == 2
    assert all(blocks == [12] for blocks in ex["blocks"].values())
