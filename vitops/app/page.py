"""report.html: one self-contained page (figures inlined as PNG data), from the summary."""

from __future__ import annotations

import base64
import datetime
import html
import json

from .figures import CAPTIONS


def _prob(p) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def _sizes(m) -> str:
    """The size the images were analysed at, and the model's native one when it differs."""
    native = "x".join(map(str, m["image_size"]))
    analysed = "x".join(map(str, (m.get("preprocessing") or {}).get("size") or m["image_size"]))
    return analysed if analysed == native else f"{analysed} (native {native})"


def _percent(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _tokens(label: str, m: dict) -> str:
    """One model's tokens, the attention its registers receive, and what stands in for a
    missing class token."""
    e = html.escape
    t, mass = m["tokens"], m["token_mass"]["mean"]  # mass: (L, [class, registers, patches])
    text = f"<b>{e(label)}</b>: {t['class']} class token(s), {t['registers']} register(s), {t['patches']} patches."
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


def page(summary: dict, pngs: dict[str, bytes]) -> str:
    """report.html from the summary (after `strict_json`) and the figures' PNG bytes."""
    e = html.escape
    models = summary["models"]
    title = " vs ".join(models) or "model"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>vitops report: {e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.85em}</style>",
        "</head><body>",
        f"<h1>vitops report: {e(title)}</h1>",
    ]
    im = summary["images"]
    parts.append(
        f"<p>{im['analysed']} of {im['total']} image(s) analysed on the {e(summary['backend'])} backend; "
        f"generated {e(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}. "
        "Per-image results: the per_image folder beside this page.</p>"
    )
    rows = "".join(
        f"<tr><td>{e(label)}</td><td>{e(m['family'])}</td><td>{_sizes(m)}</td>"
        f"<td>{m['patch_size']}</td><td>{m['depth']}</td><td>{m['heads']}</td><td>{m['dim']}</td>"
        f"<td>{m['num_classes'] or 'headless'}</td><td>{e(json.dumps(m['preprocessing']))}</td></tr>"
        for label, m in models.items()
    )
    parts.append(
        "<table><tr><th>model</th><th>family</th><th>input</th><th>patch</th><th>blocks</th>"
        f"<th>heads</th><th>width</th><th>classes</th><th>preprocessing</th></tr>{rows}</table>"
    )
    parts.append(
        "<h2>Tokens</h2><p>Rollout, heat maps, relevance and the per-image maps cover the patches only; "
        "class tokens and registers are kept apart.</p><ul>"
        + "".join(_tokens(label, m) for label, m in models.items())
        + "</ul>"
    )
    if summary.get("non_finite_values"):
        parts.append(
            f"<p><b>Warning:</b> {summary['non_finite_values']} value(s) were not finite (NaN or "
            "infinite inputs?); metrics.json holds null for them.</p>"
        )
    if im["skipped"]:
        shown = im["skipped"][:50]
        more = (
            f"<li>and {len(im['skipped']) - 50} more (metrics.json lists all)</li>"
            if len(im["skipped"]) > 50
            else ""
        )
        parts.append(
            "<h2>Skipped images</h2><ul>"
            + "".join(f"<li><b>{e(s['image'])}</b>: {e(s['reason'])}</li>" for s in shown)
            + more
            + "</ul>"
        )
    with_head = {label: m for label, m in models.items() if m["num_classes"]}
    if with_head:
        names = list(next(iter(with_head.values()))["samples"])
        head = "".join(f"<th>{e(label)}</th>" for label in with_head)
        body = "".join(
            f"<tr><td>{e(name)}</td>"
            + "".join(
                "<td>"
                + ", ".join(
                    f"{e(p['label'])} ({_prob(p['probability'])})"
                    for p in m["samples"][name].get("predictions", [])[:3]
                )
                + "</td>"
                for m in with_head.values()
            )
            + "</tr>"
            for name in names
        )
        parts.append(
            f"<h2>Top predictions of the sample images</h2><table><tr><th>image</th>{head}</tr>{body}</table>"
        )
    for key, caption in CAPTIONS.items():
        if key in pngs:
            data = base64.b64encode(pngs[key]).decode("ascii")
            parts.append(
                f"<figure id='{key}'><h2>{e(key.replace('_', ' ').capitalize())}</h2>"
                f"<img alt='{e(key)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    parts.append("<p>Numbers behind every figure: metrics.json.</p></body></html>")
    return "\n".join(parts)
