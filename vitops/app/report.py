"""Writing a study's report into a folder: the figures as PNG, metrics.json and report.html.

    write_report(study, "out/")   # into a folder that appears whole at the end

The folder is written through `vitops.io.output_folder.OutputFolder`: an interrupted run leaves
the previous report as it was."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

from ..io.output_folder import OutputFolder
from . import tips
from .explorer import budget, page_data
from .figures import CAPTIONS, figures
from .page import EXPLORER_TEXT_BYTES, page, web_image
from .summary import strict_json, summary_of


def write_report(study, out_dir) -> dict:
    """Figures, metrics.json and report.html of a study, into out_dir (whole or not at all)."""
    with OutputFolder(out_dir) as tmp:
        return write_into(study, tmp)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def write_into(study, folder: Path) -> dict:
    """Write the report into an existing folder (the caller's temporary one); returns the
    summary as metrics.json holds it."""
    summary = summary_of(study)
    # File names, class names and model labels are text, not mathtext: "$\\nosuch$.png" is a
    # name to show, not a formula for matplotlib to parse (and fail on, ending the run).
    with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
        figs, pngs, regions = figures(study, summary), {}, {}
        for key in list(figs):
            # Rendered and released one at a time: a drawn figure holds its canvas and its
            # images' resampled copies until it is cleared (600 MB for the figures of a
            # 1024 px run when all were held to the end).
            fig = figs.pop(key)
            pngs[key] = _png(fig)
            regions[key] = tips.regions(fig)  # where the drawn layout put each value
            fig.clear()
    for key, data in pngs.items():
        (folder / f"{key}.png").write_bytes(data)
    per_image = folder / "per_image"
    summary["figures"] = [f"{k}.png" for k in CAPTIONS if k in pngs]
    summary["per_image"] = sorted(p.name for p in per_image.iterdir()) if per_image.is_dir() else []
    images = {key: web_image(data) for key, data in pngs.items()}
    clean, bad = strict_json(summary)
    clean["non_finite_values"] = bad  # NaN/inf (e.g. from NaN inputs), written as null
    # The explorer takes what the rest of the page leaves of --report-mb.
    clean["explorer"] = {}
    rest = len(page(clean, images, regions).encode()) + EXPLORER_TEXT_BYTES
    explorer = page_data(study, budget(study.settings) - rest)
    # the maps' compressed size (the page states it) is left out: float rounding of the
    # sample images' maps moves it between runs that agree on every number
    clean["explorer"] = {k: v for k, v in explorer.items() if k not in ("models", "bytes")}
    if "models" in explorer:
        clean["explorer"]["blocks"] = {m["label"]: m["blocks"] for m in explorer["models"]}
    (folder / "metrics.json").write_text(json.dumps(clean, allow_nan=False))
    (folder / "report.html").write_text(page(clean, images, regions, explorer), encoding="utf-8")
    return clean
