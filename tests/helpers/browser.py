"""A report opened in headless Chromium through Playwright, as a reader would open it from disk.

    with report_page(path) as page:   # fails the test on a console error, a page error,
        ...                           # a network request or a dialog (an injected alert)

Uses Debian's Chromium (`chromium`), not a browser Playwright downloads: nothing is fetched. Skips
when Playwright or Chromium is missing, unless VITOPS_REQUIRE_BROWSER=1 (the nox `browser`
session, CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil

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
