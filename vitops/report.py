"""`vitops analyze` and `vitops report`: drawing and writing what a study computed.

    summary = analyze(["digits_vit", "digits_deit"], ["a.png", "photos/"], "out/")
    write_report(load_studies(["s0.safetensors", "s1.safetensors"]), "out/")   # merged shards

Computing is `vitops.study`; this module turns a Study into figures (PNG), metrics.json and one
self-contained report.html, into a folder that appears whole at the end (`vitops.outdir`): an
interrupted run leaves the previous report as it was. Figure sizes do not depend on the number
of images: they show aggregates over all images and a fixed number of sample images.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from . import plot
from .errors import AnalysisError
from .outdir import OutputFolder
from .perimage import PerImageWriter
from .study import DEFAULT_SHOW, StudySettings, load_studies, run_study

# Figures in the order the report shows them, with their captions.
CAPTIONS = {
    "mean_attention_distance": "Mean attention distance of every head, per block, averaged over all images "
                               "(error bars: one standard deviation across images; shared axes across models). "
                               "Low: local heads; high: global (ViT, Fig. 7; Raghu et al. 2021).",
    "samples": "Sample images as each model saw them: attention rollout, how much each patch flows into the CLS "
               "token through all blocks (Abnar & Zuidema 2020), and the last block's CLS attention averaged "
               "over heads. With --explain, a third column: each patch's relevance for the image's top class, "
               "gradient-weighted attention through all blocks (Chefer, Gur & Wolf 2021); unlike the rollout it "
               "depends on the class.",
    "attention_heatmaps": "Last block: attention of the CLS token to every patch, one panel per head, for the first "
                          "sample image (DINO, Fig. 1).",
    "rollout_mean": "Attention rollout averaged over all images: where the models look on average.",
    "cls_trajectory": "The CLS token through the blocks: cosine similarity to its final state (mean and one "
                      "standard deviation over all images; lines: the sample images).",
    "cka": "Centered kernel alignment between the layers of each model (minibatch estimator of Nguyen et al. "
           "2021 over all images; Kornblith et al. 2019).",
    "cka_cross": "Centered kernel alignment between every layer of one model and every layer of another, over "
                 "the same images (minibatch CKA).",
    "position_similarity": "Cosine similarity of each patch's position embedding (tile at its place) to every other "
                           "patch's (ViT, Fig. 7).",
    "projection_filters": "Patch-embedding filters, each scaled to [0, 1] (ViT, Fig. 7).",
}


def analyze(models, images, out_dir, *, batch_size: int = 8, threshold: float | None = None,
            head_fusion: str = "mean", discard_ratio: float = 0.0, show: int = DEFAULT_SHOW,
            preprocessing=None, shard=None, devices=None, save_state=None, progress: bool = True,
            workers: int = 2, explain: bool = False) -> dict:
    """Analyse one or more models over the images and write the report into out_dir.

    models: a model, file, shipped or registry name, or a list of them (one column each).
    out_dir: None writes no report, only the state (save_state must then be given).
    preprocessing: overrides of the preprocessing each weight file records (one dict for all
    models, or one per model). shard (I, N): analyse the I-th of N slices of the image list.
    save_state: also write the study's state (all accumulators) to this file, for
    `vitops report` to merge. explain: draw each sample image's relevance for its top class
    beside the rollout (`vitops.analysis.gradient_rollout`; models with a head). Returns the
    summary that metrics.json holds.
    """
    settings = StudySettings(batch_size=batch_size, head_fusion=head_fusion, discard_ratio=float(discard_ratio),
                             threshold=threshold, show=show, explain=explain)
    run = dict(settings=settings, keep_per_image=save_state is not None, shard=shard, devices=devices,
               preprocessing=preprocessing, progress=progress, workers=workers)
    if out_dir is None:  # a shard's state alone: no figures
        if save_state is None:
            raise AnalysisError("nothing to write: give an output folder, a state file, or both")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vitops-per-image-") as tmp:
            study = run_study(models, images, per_image_dir=tmp, **run)
            study.save(save_state)
        return _state_summary(study)
    with OutputFolder(out_dir) as tmp:
        study = run_study(models, images, per_image_dir=tmp / "per_image", **run)
        if save_state is not None:
            study.save(save_state)
        if study.analysed == 0:  # a shard past the last batch: its (empty) state still merges
            summary = _state_summary(study)
            (tmp / "metrics.json").write_text(json.dumps(summary))
            return summary
        return _write(study, tmp)


def _state_summary(study) -> dict:
    """What a run that writes no report says about itself."""
    return {"models": {ms.label: {} for ms in study.models}, "figures": [],
            "images": {"total": study.n_images, "analysed": study.analysed, "skipped": study.skipped,
                       "shards": study.shards},
            "seconds": study.seconds}


def report_from_states(states, out_dir) -> dict:
    """Merge the state files of shards (`analyze(..., save_state=...)`) and write the report one
    run over all their images would have written, per-image files included."""
    study = load_studies(states)
    with OutputFolder(out_dir) as tmp:
        for ms in study.models:
            writer = PerImageWriter(tmp / "per_image", ms.label, study.n_images, ms.config.depth,
                                    ms.config.num_heads, ms.grid, ms.info.get("labels"),
                                    bool(ms.config.num_classes))
            writer.write_all(ms.per_image)
            writer.close()
        return _write(study, tmp)


def write_report(study, out_dir) -> dict:
    """Figures, metrics.json and report.html of a study, into out_dir (whole or not at all)."""
    with OutputFolder(out_dir) as tmp:
        return _write(study, tmp)


# ---- the summary: every number behind the figures ----

def _label(info, cls: int) -> str:
    labels = info.get("labels")
    return labels[cls] if labels and 0 <= cls < len(labels) else str(cls)


def _predictions(info, top, prob):
    return [{"class": int(c), "label": _label(info, int(c)), "probability": float(p)}
            for c, p in zip(top, prob) if c >= 0]


def _model_summary(ms, settings: StudySettings) -> dict:
    from .analysis.heatmap import mass_masks

    c = ms.config
    dist = ms.distance.result()
    cos = ms.cls_cos.result()
    out = {
        "name": c.name, "family": c.family, "image_size": list(c.image_size), "patch_size": c.patch_size,
        "depth": c.depth, "heads": c.num_heads, "dim": c.dim, "num_classes": c.num_classes,
        "source_sha256": ms.info.get("source_sha256"), "weights_sha256": ms.info.get("fingerprint"),
        "preprocessing": ms.info.get("preprocessing"),
        "mean_attention_distance": {"mean": dist["mean"], "std": dist["std"], "count": dist["count"],
                                    "unit": "pixels"},
        "attention_rollout_mean": ms.rollout.result()["mean"],
        "cls_attention_mean": ms.heat.result()["mean"],
        "cls_trajectory": {"mean": cos["mean"], "std": cos["std"]},
        "cka": None, "samples": {},
        "position_similarity": ms.weights.arrays["position_similarity"],
        "projection_filters": ms.weights.arrays["projection_filters"],
    }
    if not ms.cka.empty:
        out["cka"] = {"matrix": ms.cka.result(), "estimator": "minibatch (unbiased HSIC)",
                      "batches": ms.cka.batches}
    s = ms.samples
    for j, name in enumerate(s.names):
        entry = {"position": int(s.positions[j]), "attention_rollout": s.arrays["rollout"][j],
                 "cls_attention": s.arrays["heat"][j], "cls_trajectory": s.arrays["cls_cos"][j]}
        if c.num_classes:
            entry["predictions"] = _predictions(ms.info, s.arrays["top"][j], s.arrays["prob"][j])
        if settings.explain and c.num_classes:
            top1 = int(s.arrays["top"][j][0])  # the class explained: the model's prediction
            entry["relevance"] = {"map": s.arrays["relevance"][j], "class": top1, "label": _label(ms.info, top1),
                                  "method": "gradient-weighted attention rollout (Chefer et al. 2021)"}
        if settings.threshold is not None:
            heat = s.arrays["heat"][j]
            masks = np.asarray(mass_masks(heat.reshape(heat.shape[0], -1), settings.threshold))
            entry["cls_attention_masks"] = masks.reshape(heat.shape).astype(int)
        out["samples"][name] = entry
    return out


def _summary(study) -> dict:
    return {
        "models": {ms.label: _model_summary(ms, study.settings) for ms in study.models},
        "cross_model_cka": [{"models": [a, b], "matrix": acc.result(), "batches": acc.batches,
                             "estimator": "minibatch (unbiased HSIC)"}
                            for (a, b), acc in study.cross.items() if not acc.empty],
        "images": {"total": study.n_images, "analysed": study.analysed, "skipped": study.skipped,
                   "cka_batches_skipped": study.cka_batches_skipped, "shards": study.shards},
        "settings": dict(vars(study.settings)),
        "backend": study.backend,
        "seconds": study.seconds,
    }


def strict_json(obj):
    """Arrays to lists and non-finite floats to None (JSON has no NaN); returns (value, count of
    non-finite numbers replaced)."""
    bad = 0

    def conv(o):
        nonlocal bad
        if isinstance(o, dict):
            return {str(k): conv(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [conv(v) for v in o]
        if isinstance(o, np.ndarray):
            return conv(o.tolist())
        if isinstance(o, (np.floating, float)):
            if not math.isfinite(float(o)):
                bad += 1
                return None
            return float(o)
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.bool_):
            return bool(o)
        return o

    return conv(obj), bad


# ---- figures ----

def _shown(ms):
    return ms.samples.arrays["display"].astype(np.float32) / 255.0


def _figures(study, summary) -> dict:
    models = study.models
    labels = [ms.label for ms in models]
    figs = {}
    hi = max(float(np.nanmax(m["mean_attention_distance"]["mean"] + m["mean_attention_distance"]["std"]))
             for m in summary["models"].values())
    fig, subs = plot.side_by_side(len(models), 6.5, 4.5)
    for ms, sub in zip(models, subs):
        d = summary["models"][ms.label]["mean_attention_distance"]
        plot.mean_attention_distance(d["mean"], d["std"] if d["count"] > 1 else None, title=ms.label,
                                     fig=sub, ylim=(0, 1.05 * hi if hi > 0 else 1))
    figs["mean_attention_distance"] = fig

    if not models[0].samples.empty:
        titles = []
        for j, name in enumerate(models[0].samples.names):
            row = []
            for ms in models:
                preds = summary["models"][ms.label]["samples"][name].get("predictions")
                row.append(f"{name}" + (f" → {preds[0]['label']} ({preds[0]['probability']:.2f})" if preds else ""))
            titles.append(row)
        figs["samples"] = plot.sample_overlays(
            [_shown(ms) for ms in models], [ms.samples.arrays["rollout"] for ms in models],
            [ms.samples.arrays["heat"].mean(axis=1) for ms in models], titles, labels,
            [ms.samples.arrays["relevance"] for ms in models] if study.settings.explain else None)
        fig, subs = plot.side_by_side(len(models), 2.3 * min(models[0].config.num_heads, 6), 2.6 *
                                      math.ceil(max(m.config.num_heads for m in models) / 6) + 0.4)
        for ms, sub in zip(models, subs):
            first = ms.samples.names[0]
            entry = summary["models"][ms.label]["samples"][first]
            masks = entry.get("cls_attention_masks")
            plot.attention_heatmaps(_shown(ms)[0], ms.samples.arrays["heat"][0],
                                    None if masks is None else np.asarray(masks), fig=sub,
                                    title=f"{ms.label}: {first}" + (f" (mass threshold {study.settings.threshold})"
                                                                    if masks is not None else ""))
        figs["attention_heatmaps"] = fig

    fig, subs = plot.side_by_side(len(models), 4.5, 4)
    for ms, sub in zip(models, subs):
        plot.mean_map(summary["models"][ms.label]["attention_rollout_mean"], title=f"{ms.label}: mean rollout", fig=sub)
    figs["rollout_mean"] = fig

    fig, subs = plot.side_by_side(len(models), 6.5, 4)
    for ms, sub in zip(models, subs):
        t = summary["models"][ms.label]["cls_trajectory"]
        cos = ms.samples.arrays["cls_cos"] if not ms.samples.empty else np.zeros((0, ms.config.depth + 1))
        plot.cls_trajectory(cos, ms.samples.names, fig=sub, mean=t["mean"], std=t["std"], title=ms.label)
    figs["cls_trajectory"] = fig

    with_cka = [ms for ms in models if summary["models"][ms.label]["cka"] is not None]
    if with_cka:
        fig, subs = plot.side_by_side(len(with_cka), 5.5, 4.8)
        for ms, sub in zip(with_cka, subs):
            plot.cka_matrix(summary["models"][ms.label]["cka"]["matrix"], title=f"{ms.label}: CKA between layers",
                            fig=sub)
        figs["cka"] = fig
    cross = summary["cross_model_cka"]
    if cross:
        fig, subs = plot.side_by_side(len(cross), 5.5, 4.8)
        for entry, sub in zip(cross, subs):
            a, b = entry["models"]
            plot.cka_matrix(entry["matrix"], title=f"CKA: {a} vs {b}", fig=sub,
                            xlabel=f"{b} layer (0 = embeddings)", ylabel=f"{a} layer (0 = embeddings)")
        figs["cka_cross"] = fig

    fig, subs = plot.side_by_side(len(models), 5.5, 5.5)
    for ms, sub in zip(models, subs):
        plot.position_similarity(summary["models"][ms.label]["position_similarity"], ms.config.grid_size, fig=sub,
                                 title=f"{ms.label}: position embedding similarity")
    figs["position_similarity"] = fig
    fig, subs = plot.side_by_side(len(models), 5.6, 6)
    for ms, sub in zip(models, subs):
        plot.projection_filters(summary["models"][ms.label]["projection_filters"], fig=sub,
                                title=f"{ms.label}: first patch-embedding filters")
    figs["projection_filters"] = fig
    return figs


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _write(study, folder: Path) -> dict:
    summary = _summary(study)
    pngs = {key: _png(fig) for key, fig in _figures(study, summary).items()}
    for key, data in pngs.items():
        (folder / f"{key}.png").write_bytes(data)
    per_image = folder / "per_image"
    summary["figures"] = [f"{k}.png" for k in CAPTIONS if k in pngs]
    summary["per_image"] = sorted(p.name for p in per_image.iterdir()) if per_image.is_dir() else []
    clean, bad = strict_json(summary)
    clean["non_finite_values"] = bad  # NaN/inf (e.g. from NaN inputs), written as null
    (folder / "metrics.json").write_text(json.dumps(clean, allow_nan=False))
    (folder / "report.html").write_text(_html(clean, pngs))
    return clean


def _prob(p) -> str:
    return "n/a" if p is None else f"{p:.3f}"


def _sizes(m) -> str:
    """The size the images were analysed at, and the model's native one when it differs."""
    native = "x".join(map(str, m["image_size"]))
    analysed = "x".join(map(str, (m.get("preprocessing") or {}).get("size") or m["image_size"]))
    return analysed if analysed == native else f"{analysed} (native {native})"


def _html(summary: dict, pngs: dict[str, bytes]) -> str:
    e = html.escape
    models = summary["models"]
    title = " vs ".join(models) or "model"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>vitops report: {e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.85em}</style>",
        "</head><body>", f"<h1>vitops report: {e(title)}</h1>",
    ]
    im = summary["images"]
    parts.append(f"<p>{im['analysed']} of {im['total']} image(s) analysed on the {e(summary['backend'])} backend; "
                 f"generated {e(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}. "
                 "Per-image results: the per_image folder beside this page.</p>")
    rows = "".join(
        f"<tr><td>{e(label)}</td><td>{e(m['family'])}</td><td>{_sizes(m)}</td>"
        f"<td>{m['patch_size']}</td><td>{m['depth']}</td><td>{m['heads']}</td><td>{m['dim']}</td>"
        f"<td>{m['num_classes'] or 'headless'}</td><td>{e(json.dumps(m['preprocessing']))}</td></tr>"
        for label, m in models.items())
    parts.append("<table><tr><th>model</th><th>family</th><th>input</th><th>patch</th><th>blocks</th>"
                 f"<th>heads</th><th>width</th><th>classes</th><th>preprocessing</th></tr>{rows}</table>")
    if summary.get("non_finite_values"):
        parts.append(f"<p><b>Warning:</b> {summary['non_finite_values']} value(s) were not finite (NaN or "
                     "infinite inputs?); metrics.json holds null for them.</p>")
    if im["skipped"]:
        shown = im["skipped"][:50]
        more = f"<li>and {len(im['skipped']) - 50} more (metrics.json lists all)</li>" if len(im["skipped"]) > 50 else ""
        parts.append("<h2>Skipped images</h2><ul>" + "".join(
            f"<li><b>{e(s['image'])}</b>: {e(s['reason'])}</li>" for s in shown) + more + "</ul>")
    with_head = {label: m for label, m in models.items() if m["num_classes"]}
    if with_head:
        names = list(next(iter(with_head.values()))["samples"])
        head = "".join(f"<th>{e(label)}</th>" for label in with_head)
        body = "".join(
            f"<tr><td>{e(name)}</td>" + "".join(
                "<td>" + ", ".join(f"{e(p['label'])} ({_prob(p['probability'])})"
                                   for p in m["samples"][name].get("predictions", [])[:3]) + "</td>"
                for m in with_head.values()) + "</tr>" for name in names)
        parts.append(f"<h2>Top predictions of the sample images</h2><table><tr><th>image</th>{head}</tr>{body}</table>")
    for key, caption in CAPTIONS.items():
        if key in pngs:
            data = base64.b64encode(pngs[key]).decode("ascii")
            parts.append(f"<figure id='{key}'><h2>{e(key.replace('_', ' ').capitalize())}</h2>"
                         f"<img alt='{e(key)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append("<p>Numbers behind every figure: metrics.json.</p></body></html>")
    return "\n".join(parts)


__all__ = ["analyze", "report_from_states", "write_report", "strict_json", "CAPTIONS"]
