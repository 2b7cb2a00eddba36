"""`vitops analyze`: a model and images in; figures, metrics.json and one report.html out.

    summary = analyze("digits_vit", ["a.png", "b.jpg"], "out/")

Bad images are named and skipped; the rest are analysed. A model that cannot be read is an
error before any work starts. Everything is computed batch by batch with the analysis kernels,
so long image lists need memory for one batch of attention maps, not for all of them.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
import time
from pathlib import Path

import keras
import numpy as np

from . import _backend, analysis, plot
from .loading import resolve_model
from .preprocess import DEFAULT_CROP_PCT, denormalize, preprocess

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
FIGURES = ("mean_attention_distance", "attention_rollout", "attention_heatmaps", "position_similarity",
           "projection_filters", "cls_trajectory", "cka")


def expand_images(items) -> list:
    """Paths (files or folders, whose image files are taken in name order) and arrays."""
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and os.path.isdir(item):
            out.extend(sorted(str(p) for p in Path(item).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            out.append(item)
    return out


def _batches(n: int, size: int) -> list[slice]:
    """Batch boundaries; a last batch under 4 images joins the one before (unbiased CKA needs 4)."""
    edges = list(range(0, n, size)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] < 4:
        edges.pop(-2)
    return [slice(a, b) for a, b in zip(edges[:-1], edges[1:])]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _top(probs: np.ndarray, labels, k: int = 5):
    idx = np.argsort(probs)[::-1][:k]
    return [{"class": int(i), "label": labels[i] if labels and i < len(labels) else str(int(i)),
             "probability": float(probs[i])} for i in idx]


def analyze(model, images, out_dir, *, batch_size: int = 8, threshold: float | None = None,
            head_fusion: str = "mean", discard_ratio: float = 0.0, family: str | None = None,
            crop_pct: float | None = None, progress: bool = True) -> dict:
    """Run every analysis over the images and write the report into out_dir. Returns the
    summary that metrics.json holds."""
    start = time.perf_counter()
    model = resolve_model(model)  # fails here, before any work, if the model cannot be read
    config = model.config
    meta = getattr(model, "metadata", {}) or {}
    family = family or config.family
    crop_pct = crop_pct or float(meta.get("crop_pct", DEFAULT_CROP_PCT))
    labels = meta.get("labels", "").split(",") if meta.get("labels") else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    items = expand_images(images)
    if not items:
        raise ValueError("no images to analyse")
    arrays, names, skipped = [], [], []
    bar = keras.utils.Progbar(len(items), unit_name="image", verbose=1 if progress else 0)
    for i, item in enumerate(items):
        name = os.path.basename(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else f"array_{i}"
        if name in names or any(s["image"] == name for s in skipped):
            name = f"{name} (#{i + 1})"  # metrics.json is keyed by image name: keep them distinct
        try:
            arrays.append(preprocess([item], size=config.image_size, family=family, crop_pct=crop_pct)[0])
            names.append(name)
        except (ValueError, OSError) as e:  # unreadable, undecodable, wrong shape: named, skipped
            skipped.append({"image": name, "reason": str(e)})
        bar.update(i + 1)
    if not arrays:
        raise ValueError("none of the images could be read: " + "; ".join(s["reason"] for s in skipped))
    x = np.stack(arrays)  # (n, H, W, 3)
    n, p, prefix = len(x), config.patch_size, config.num_prefix_tokens
    grid = config.grid_size

    distance = analysis.AttentionDistance(p, num_prefix_tokens=prefix, grid=grid)
    cka = analysis.MinibatchCKA() if n >= 4 else None
    rollouts, heatmaps, masks, cos, predictions, hidden_small = [], [], [], [], [], []
    for sl in _batches(n, batch_size):
        res = model(x[sl], return_attention=True, return_hidden=True)
        distance.update(res["attention"])
        rollouts.append(keras.ops.convert_to_numpy(analysis.cls_rollout(
            res["attention"], head_fusion, discard_ratio, num_prefix_tokens=prefix, grid=grid)))
        heatmaps.append(keras.ops.convert_to_numpy(analysis.attention_heatmaps(
            res["attention"], grid=grid, num_prefix_tokens=prefix)))
        if threshold is not None:
            masks.append(keras.ops.convert_to_numpy(analysis.attention_heatmaps(
                res["attention"], grid=grid, num_prefix_tokens=prefix, threshold=threshold)))
        cos.append(keras.ops.convert_to_numpy(analysis.cls_trajectory(res["hidden"])[1]))
        if cka is not None:
            cka.update(res["hidden"])
        elif n >= 2:
            hidden_small.append([keras.ops.convert_to_numpy(h) for h in res["hidden"]])
        if "logits" in res:
            probs = keras.ops.convert_to_numpy(keras.ops.softmax(keras.ops.cast(res["logits"], "float32")))
            predictions.extend(_top(row, labels) for row in probs)
    rollout, heat, cos = np.concatenate(rollouts), np.concatenate(heatmaps), np.concatenate(cos)
    mask = np.concatenate(masks) if masks else None
    dist = distance.result()
    params = model.variables_by_key
    sim = keras.ops.convert_to_numpy(analysis.position_similarity(params["pos_embed"], prefix))
    filters = keras.ops.convert_to_numpy(analysis.projection_filters(params))[:64]
    cka_matrix, cka_kind = None, None
    if cka is not None:
        cka_matrix, cka_kind = cka.result(), "minibatch (unbiased HSIC)"
    elif n >= 2:  # 2 or 3 images: the biased estimator, the only one defined there
        layers = hidden_small[0]
        cka_matrix = np.array([[float(keras.ops.convert_to_numpy(analysis.linear_cka(a, b))) for b in layers]
                               for a in layers])
        cka_kind = "linear (biased; fewer than 4 images)"

    shown = denormalize(x, family)
    figures = {
        "mean_attention_distance": plot.mean_attention_distance(dist["mean"], dist["std"] if n > 1 else None),
        "attention_rollout": plot.rollout_overlays(shown, rollout, names),
        "attention_heatmaps": plot.attention_heatmaps(shown[0], heat[0], None if mask is None else mask[0],
                                                      title=f"Last-block CLS attention per head: {names[0]}"
                                                      + (f" (mass threshold {threshold})" if mask is not None else "")),
        "position_similarity": plot.position_similarity(sim, grid),
        "projection_filters": plot.projection_filters(filters),
        "cls_trajectory": plot.cls_trajectory(cos, names),
    }
    if cka_matrix is not None:
        figures["cka"] = plot.cka_matrix(cka_matrix, f"CKA between layers ({cka_kind}, {n} images)")
    pngs = {}
    for key, fig in figures.items():
        pngs[key] = _png(fig)
        (out / f"{key}.png").write_bytes(pngs[key])

    summary = {
        "model": {"name": config.name, "family": family, "image_size": list(config.image_size),
                  "patch_size": p, "depth": config.depth, "heads": config.num_heads, "dim": config.dim,
                  "num_classes": config.num_classes, "source_sha256": meta.get("source_sha256")},
        "backend": _backend.name(),
        "images": names, "skipped": skipped,
        "settings": {"head_fusion": head_fusion, "discard_ratio": discard_ratio, "threshold": threshold,
                     "crop_pct": crop_pct},
        "mean_attention_distance": {"mean": dist["mean"].tolist(), "std": dist["std"].tolist(),
                                    "count": dist["count"], "unit": "pixels"},
        "attention_rollout": {name: r.tolist() for name, r in zip(names, rollout)},
        "attention_heatmaps": {names[0]: heat[0].tolist()},
        "position_similarity": sim.tolist(),
        "projection_filters": filters.tolist(),
        "cls_trajectory": {name: c.tolist() for name, c in zip(names, cos)},
        "cka": None if cka_matrix is None else {"matrix": cka_matrix.tolist(), "estimator": cka_kind},
        "predictions": {name: p for name, p in zip(names, predictions)} if predictions else None,
        "figures": sorted(f"{k}.png" for k in pngs),
    }
    if mask is not None:
        summary["attention_heatmaps_masks"] = {names[0]: mask[0].astype(int).tolist()}
    summary["seconds"] = time.perf_counter() - start
    (out / "metrics.json").write_text(json.dumps(summary))
    (out / "report.html").write_text(_html(summary, pngs))
    return summary


_CAPTIONS = {
    "mean_attention_distance": "Mean attention distance of every head, per block, averaged over the images "
                               "(error bars: one standard deviation across images). Low: local heads; high: global.",
    "attention_rollout": "Attention rollout: how much each patch flows into the CLS token through all blocks "
                         "(Abnar & Zuidema 2020).",
    "attention_heatmaps": "Last block: attention of the CLS token to every patch, one panel per head (DINO, Fig. 1).",
    "position_similarity": "Cosine similarity of each patch's position embedding (tile at its place) to every "
                           "other patch's (ViT, Fig. 7).",
    "projection_filters": "Patch-embedding filters, each scaled to [0, 1] (ViT, Fig. 7).",
    "cls_trajectory": "The CLS token through the blocks: cosine similarity to its final state.",
    "cka": "Centered kernel alignment between the layers' representations (Kornblith et al. 2019; "
           "minibatch estimator of Nguyen et al. 2021).",
}


def _html(summary: dict, pngs: dict[str, bytes]) -> str:
    e = html.escape
    m = summary["model"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>vitops report: {e(m['name'] or 'model')}</title>",
        "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}figure{margin:1.5em 0}figcaption{color:#555;font-size:.9em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;font-size:.9em}</style>",
        "</head><body>",
        f"<h1>vitops report: {e(m['name'] or 'model')}</h1>",
        f"<p>{e(m['family'])} ViT, {m['image_size'][0]}x{m['image_size'][1]} px, patch {m['patch_size']}, "
        f"{m['depth']} blocks, {m['heads']} heads, width {m['dim']}; backend {e(summary['backend'])}; "
        f"{len(summary['images'])} image(s) analysed; generated "
        f"{e(datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}.</p>",
    ]
    if summary["skipped"]:
        parts.append("<h2>Skipped images</h2><ul>" + "".join(
            f"<li><b>{e(s['image'])}</b>: {e(s['reason'])}</li>" for s in summary["skipped"]) + "</ul>")
    if summary["predictions"]:
        rows = "".join(
            f"<tr><td>{e(name)}</td><td>" + ", ".join(f"{e(p['label'])} ({p['probability']:.3f})" for p in preds)
            + "</td></tr>" for name, preds in summary["predictions"].items())
        parts.append(f"<h2>Top predictions</h2><table><tr><th>image</th><th>top classes</th></tr>{rows}</table>")
    for key in FIGURES:
        if key in pngs:
            data = base64.b64encode(pngs[key]).decode("ascii")
            parts.append(f"<figure id='{key}'><h2>{e(key.replace('_', ' ').capitalize())}</h2>"
                         f"<img alt='{e(key)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{e(_CAPTIONS[key])}</figcaption></figure>")
    parts.append("<p>Numbers behind every figure: metrics.json.</p></body></html>")
    return "\n".join(parts)
