"""report.html: one self-contained page from the summary: the figures inlined (WebP) with
their values to hover over (`vitops.app.tips`), the attention explorer (`vitops.app.explorer`),
a table of contents, light and dark colours. No network request: a Content-Security-Policy
allows only what the page carries. Everything from outside (file names, labels, model names,
metadata) is escaped, in the HTML and in the embedded data."""

from __future__ import annotations

import base64
import datetime
import html
from importlib import resources

from .explorer import embedded_json
from .figures import CAPTIONS, TITLES

# The explorer's section without its data (controls, notes, a contents entry) stays within this:
# what the page keeps for it when sizing the maps to --report-mb.
EXPLORER_TEXT_BYTES = 4096
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets").joinpath(name).read_text(encoding="utf-8")


def _prob(p) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def _sizes(m) -> str:
    """The size the images were analysed at, and the model's native one when it differs."""
    native = " x ".join(map(str, m["image_size"]))
    analysed = " x ".join(map(str, (m.get("preprocessing") or {}).get("size") or m["image_size"]))
    return analysed if analysed == native else f"{analysed} (native {native})"


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def preprocessing_text(p: dict | None) -> str:
    """A model's preprocessing as a sentence: resize, crop, normalisation."""
    if not p:
        return "n/a"
    h, w = p["size"]
    crop = p.get("crop_pct", 1.0)
    interp = p.get("interpolation", "bicubic")
    if p.get("keep_aspect", True):
        side = round(min(h, w) / crop)
        resize = f"shorter side resized to {side} px ({interp})"
    else:
        resize = f"resized to {round(h / crop)} x {round(w / crop)} px ({interp})"
    crop_text = f", centre crop {h} x {w}" if crop < 1 or p.get("keep_aspect", True) else ""
    return f"{resize}{crop_text}; minus mean {_numbers(p['mean'])}, divided by std {_numbers(p['std'])}"


def _percent(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _tokens(label: str, m: dict) -> str:
    """One model's tokens, the attention its registers receive, and what stands in for a
    missing class token."""
    t, mass = m["tokens"], m["token_mass"]["mean"]  # mass: (L, [class, registers, patches])
    text = f"<b>{_e(label)}</b>: {t['class']} class token(s), {t['registers']} register(s), {t['patches']} patches."
    if t["registers"] and mass:
        regs = [row[1] for row in mass]
        known = [v for v in regs if v is not None]
        mean = sum(known) / len(known) if known else None
        peak = max(range(len(regs)), key=lambda i: -1 if regs[i] is None else regs[i])
        text += (
            f" The registers receive {_percent(mean)} of the attention averaged over blocks, "
            f"{_percent(regs[-1])} in the last block and most in block {peak + 1} ({_percent(regs[peak])})."
        )
    if m["query"] != "class token":
        text += (
            " No class token: its attention-pool head's query stands in for the class token's row in the "
            "rollout, the CLS attention heat maps and the relevance maps, and the mean patch token for the "
            "class token in the CLS trajectory."
        )
    return f"<li>{text}</li>"


# Figures travel in the page as WebP (the PNG files beside it are for papers): lossless for
# charts, lossy (quality 90) for those made of images (sample images, heat maps, PCA), where it
# is under half the lossless size. For two ViT-B/16 models and 8 sample images this takes the
# figures from 5.6 MB of PNG to 1.1 MB.
LOSSY_QUALITY = 90


def web_image(png: bytes) -> tuple[str, bytes]:
    """(MIME type, bytes) of a figure as the page carries it."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return "image/png", png
    lossless = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    lossy = cv2.imencode(".webp", image, [cv2.IMWRITE_WEBP_QUALITY, LOSSY_QUALITY])[1].tobytes()
    best = lossy if len(lossy) < len(lossless) / 2 else lossless
    return ("image/webp", best) if len(best) < len(png) else ("image/png", png)


def _figure(key: str, image: tuple[str, bytes], regions) -> str:
    mime, payload = image
    data = base64.b64encode(payload).decode("ascii")
    spans = "".join(
        f"<span class='region' tabindex='-1' data-tip='{_e(text)}' style='left:{100 * x:.3f}%;"
        f"top:{100 * y:.3f}%;width:{100 * w:.3f}%;height:{100 * h:.3f}%'></span>"
        for x, y, w, h, text in regions
    )
    hint = " Hover over the figure, or focus it and use the arrow keys, for the values." if regions else ""
    attrs = (
        " tabindex='0' aria-label='" + _e(TITLES[key]) + ": values on hover or with the arrow keys'"
        if regions
        else ""
    )
    return (
        f"<section id='{key}'><h2>{_e(TITLES[key])}</h2><figure>"
        f"<div class='chart'{attrs}><img alt='{_e(TITLES[key])}' src='data:{mime};base64,{data}'>{spans}</div>"
        f"<figcaption>{_e(CAPTIONS[key])}{hint} The figure as a file: {key}.png.</figcaption></figure></section>"
    )


def _explorer(data: dict) -> str:
    if "models" not in data:
        why = data.get("omitted")
        if not why:
            return ""
        return (
            "<section id='explorer'><h2>Attention explorer</h2>"
            f"<p class='note'>The attention explorer is left out: {_e(why)}.</p></section>"
        )
    m0 = data["models"][0]
    left = "".join(
        f"<li>{_e(label)}: {_e(why)}; raise --report-mb or explore fewer blocks (--explore-blocks)</li>"
        for label, why in data.get("left_out", {}).items()
    )
    parts = [
        "<p>Every query token's attention over the sample images, for each model side by side: click a patch "
        "(or focus an image and use the arrow keys), or pick the class token, the distillation token or a "
        "register as the query, then a block and a head. The rollout option shows how much each patch flows "
        "into the query through all blocks (Abnar &amp; Zuidema 2020, the run's head fusion). Colours scale "
        "to each map's largest patch value; the prefix tokens' values are written below each image.</p>",
        "<div class='controls'>",
        "<label>Image <select id='ex-image'></select></label>",
        "<label>Map <select id='ex-map'><option value='attention'>attention of one block</option>"
        "<option value='rollout'>rollout through all blocks</option></select></label>",
        "<label>Block <select id='ex-block'></select></label>",
        "<label>Head <select id='ex-head'></select></label>",
        "<label>Query <select id='ex-query'></select></label>",
        "</div><div id='ex-panels'></div>",
        f"<p class='note'>Maps carried in this page quantised to {data['bits']} bits per value (each query's "
        f"patch values to {(1 << data['bits']) - 1} levels of its largest, within half a level; prefix tokens as "
        "float16): "
        f"{data['bytes'] / 1e6:.2f} MB for {len(data['models'])} model(s) x {len(m0['names'])} image(s) "
        "(--explore-blocks, --report-mb).</p>",
        f"<p class='note'>Not in the explorer:</p><ul class='note'>{left}</ul>" if left else "",
        f"<script type='application/json' id='explorer-data'>{embedded_json(data)}</script>",
    ]
    return "<section id='explorer'><h2>Attention explorer</h2>" + "".join(parts) + "</section>"


def page(
    summary: dict,
    images: dict[str, tuple[str, bytes]],
    regions: dict | None = None,
    explorer: dict | None = None,
) -> str:
    """report.html from the summary (after `strict_json`), the figures as the page carries them
    ({key: (MIME type, bytes)}, `web_image`), their hover regions ({key: [(left, top, width,
    height, text)]}, `tips.regions`) and the explorer's data (`explorer.page_data`)."""
    regions = regions or {}
    models = summary["models"]
    title = " vs ".join(models) or "model"
    sections: list[tuple[str, str, str]] = []  # (id, heading for the contents, HTML)
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td>{_e(m['family'])}</td><td>{_sizes(m)}</td>"
        f"<td>{m['patch_size']}</td><td>{m['depth']}</td><td>{m['heads']}</td><td>{m['dim']}</td>"
        f"<td>{m['num_classes'] or 'headless'}</td><td>{_e(preprocessing_text(m['preprocessing']))}</td></tr>"
        for label, m in models.items()
    )
    sections.append(
        (
            "models",
            "Models",
            "<table><tr><th>model</th><th>family</th><th>input (px)</th><th>patch</th><th>blocks</th>"
            f"<th>heads</th><th>width</th><th>classes</th><th>preprocessing</th></tr>{rows}</table>",
        )
    )
    sections.append(
        (
            "tokens",
            "Tokens",
            "<p>Rollout, heat maps, relevance and the per-image maps cover the patches only; class tokens and "
            "registers are kept apart.</p><ul>"
            + "".join(_tokens(label, m) for label, m in models.items())
            + "</ul>",
        )
    )
    im = summary["images"]
    if im["skipped"]:
        shown = im["skipped"][:50]
        more = (
            f"<li>and {len(im['skipped']) - 50} more (metrics.json lists all)</li>"
            if len(im["skipped"]) > 50
            else ""
        )
        sections.append(
            (
                "skipped",
                "Skipped images",
                "<ul>"
                + "".join(f"<li><b>{_e(s['image'])}</b>: {_e(s['reason'])}</li>" for s in shown)
                + more
                + "</ul>",
            )
        )
    with_head = {label: m for label, m in models.items() if m["num_classes"]}
    if with_head:
        names = list(next(iter(with_head.values()))["samples"])
        head = "".join(f"<th>{_e(label)}</th>" for label in with_head)
        body = "".join(
            f"<tr><td>{_e(name)}</td>"
            + "".join(
                "<td>"
                + ", ".join(
                    f"{_e(p['label'])} ({_prob(p['probability'])})"
                    for p in m["samples"][name].get("predictions", [])[:3]
                )
                + "</td>"
                for m in with_head.values()
            )
            + "</tr>"
            for name in names
        )
        if names:
            sections.append(
                ("predictions", "Top predictions", f"<table><tr><th>image</th>{head}</tr>{body}</table>")
            )
    explorer_html = _explorer(explorer or {})
    if explorer_html:
        sections.append(("explorer", "Attention explorer", explorer_html))
    figures = [(key, _figure(key, images[key], regions.get(key, []))) for key in CAPTIONS if key in images]

    contents = "".join(f"<li><a href='#{sid}'>{_e(heading)}</a></li>" for sid, heading, _ in sections)
    contents += "".join(f"<li><a href='#{key}'>{_e(TITLES[key])}</a></li>" for key, _ in figures)
    body_parts = [
        html_ if sid == "explorer" else f"<section id='{sid}'><h2>{_e(heading)}</h2>{html_}</section>"
        for sid, heading, html_ in sections
    ]
    warning = ""
    if summary.get("non_finite_values"):
        warning = (
            f"<p><b>Warning:</b> {summary['non_finite_values']} value(s) were not finite (NaN or infinite "
            "inputs?); metrics.json holds null for them.</p>"
        )
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            "<meta name='color-scheme' content='light dark'>",
            f"<title>vitops report: {_e(title)}</title>",
            f"<style>{_asset('report.css')}</style></head><body>",
            "<div class='layout'><nav aria-label='Contents'><b>Contents</b><ol>"
            + contents
            + "</ol></nav><main>",
            f"<h1>vitops report: {_e(title)}</h1>",
            f"<p>{im['analysed']} of {im['total']} image(s) analysed on the {_e(summary['backend'])} backend; "
            f"generated {_e(generated)}. Per-image results: the per_image folder beside this page; the numbers "
            "behind every figure: metrics.json.</p>",
            warning,
            *body_parts,
            *(h for _, h in figures),
            "</main></div><div id='tooltip' role='tooltip' hidden></div>",
            f"<script>{_asset('report.js')}</script>",
            "</body></html>",
        ]
    )
