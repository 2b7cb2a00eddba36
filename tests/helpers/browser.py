"""A report opened in headless Chromium through Playwright, as a reader would open it from disk.

    with report_page(path) as page:   # fails the test on a console error, a page error,
        ...                           # a network request or a dialog (an injected alert)

Uses Debian's Chromium (`chromium`), not a browser Playwright downloads: nothing is fetched. Skips
when Playwright or Chromium is missing, unless VITOPS_REQUIRE_BROWSER=1 (the nox `browser`
session, CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import numpy as np
import pytest


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _missing(what: str):
    if os.environ.get("VITOPS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{what}, and VITOPS_REQUIRE_BROWSER=1")
    pytest.skip(f"{what} (the nox 'browser' session installs it)")


@contextlib.contextmanager
def report_page(path, viewport=(1280, 900), dark: bool = False):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed")
    browser_path = chromium()
    if browser_path is None:
        _missing("no Chromium installed")
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(
                viewport={"width": viewport[0], "height": viewport[1]},
                color_scheme="dark" if dark else "light",
            )
            page.on(
                "console",
                lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith(("data:", "blob:")) or r.url == page_url
                    else problems.append(f"request: {r.url[:100]}")
                ),
            )
            page_url = path.resolve().as_uri()
            page.goto(page_url)
            page.wait_for_load_state("load")
            yield page
            page.wait_for_timeout(100)  # late errors of what the test did last
        finally:
            browser.close()
    assert not problems, problems


def figures_loaded(page) -> tuple[int, int]:
    """(images decoded, images on the page): every <img> complete with a width."""
    return page.evaluate(
        "() => { const imgs = [...document.images];"
        " return [imgs.filter(i => i.complete && i.naturalWidth > 0).length, imgs.length]; }"
    )


def broken_contents_links(page) -> list[str]:
    """The table of contents' links whose target is not on the page."""
    return page.evaluate(
        "() => [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href'))"
        ".filter(h => !h.startsWith('#') || !document.getElementById(decodeURIComponent(h.slice(1))))"
    )


# ---- the attention explorer ----


def after(page, action):
    """Do action (a click or a choice) and wait until the explorer has drawn what it asked."""
    before = page.get_attribute("#explorer", "data-ready")
    action()
    page.wait_for_function(
        f"() => document.getElementById('explorer').dataset.ready !== {json.dumps(before)}", timeout=10000
    )


def click_patch(page, model: int, row: int, col: int, grid) -> None:
    canvas = page.locator("#ex-panels canvas").nth(model)
    box = canvas.bounding_box()
    pos = {"x": (col + 0.5) / grid[1] * box["width"], "y": (row + 0.5) / grid[0] * box["height"]}
    after(page, lambda: canvas.click(position=pos))


def choose(page, select: str, label: str) -> None:
    after(page, lambda: page.select_option(f"#ex-{select}", label=label))


def shown(page, model: int) -> dict:
    """What the model's panel displays: its data attributes, values parsed."""
    d = page.locator("#ex-panels canvas").nth(model).evaluate("c => ({...c.dataset})")
    return {
        **d,
        "values": np.array(json.loads(d["values"])),
        "prefix": np.array(json.loads(d["prefix"])),
        "step": float(d["step"]),
    }


def model_attention(model, path, preprocessing=None) -> list[np.ndarray]:
    """Every block's (H, T, T) attention of the image as the report's model saw it, float64."""
    from vitops.app.run import Preparer
    from vitops.io.image_file import read_image

    x = Preparer.for_model(model, preprocessing).prepare(read_image(path))
    out = model.infer(x[None], return_attention=True)
    return [np.asarray(a, np.float64)[0] for a in out["attention"]]


def check_row(got: dict, row: np.ndarray, prefix: int, levels: int = 255) -> None:
    """The displayed row equals the model's within the quantisation step (a wrong block, head
    or query is off by far more)."""
    np.testing.assert_array_less(np.abs(got["values"] - row[prefix:]), got["step"] + 1e-7)
    np.testing.assert_allclose(got["prefix"], row[:prefix], rtol=2e-3, atol=1e-6)
    assert got["step"] == pytest.approx(row[prefix:].max() / levels, rel=2e-3)


def patch_pixel(page, model: int, row: int, col: int, grid) -> list[int]:
    """The RGBA the explorer drew at the centre of a patch of a model's panel."""
    return (
        page.locator("#ex-panels canvas")
        .nth(model)
        .evaluate(
            "(c, [i, j, rows, cols]) => [...c.getContext('2d').getImageData("
            "Math.floor((j + 0.5) * c.width / cols), Math.floor((i + 0.5) * c.height / rows), 1, 1).data]",
            [row, col, grid[0], grid[1]],
        )
    )


def check_drawn(page, model: int, values: np.ndarray, grid) -> None:
    """The panel paints what it says: the largest patch in the ramp's light top colour (over any
    image: alpha 0.8 of (252, 255, 164)), a patch under 5 % of it dark (at most 0.7 x 255 x 0.8
    of the dimmed image)."""
    top, low = int(np.argmax(values)), int(np.argmin(values))
    r, g, _, _ = patch_pixel(page, model, *divmod(top, grid[1]), grid)
    assert r >= 200 and g >= 200, (r, g)
    if values[low] < 0.05 * values[top]:
        r, g, _, _ = patch_pixel(page, model, *divmod(low, grid[1]), grid)
        assert r <= 150 and g <= 150, (r, g)
