"""The figures of a report, drawn from a Study and its summary (matplotlib Figures, no pyplot
state). Each figure shows aggregates over all images or a fixed number of sample images, so its
size does not depend on how many images were analysed."""

from __future__ import annotations

import math

import numpy as np

from . import plots as plot

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


def _shown(ms):
    return ms.samples.arrays["display"].astype(np.float32) / 255.0


def figures(study, summary) -> dict:
    """{figure key: matplotlib Figure} of the figures this study has, keys as in CAPTIONS."""
    models = study.models
    labels = [ms.label for ms in models]
    figs = {}
    hi = max(
        float(np.nanmax(m["distance"]["mean"] + m["distance"]["std"])) for m in summary["models"].values()
    )
    fig, subs = plot.side_by_side(len(models), 6.5, 4.5)
    for ms, sub in zip(models, subs):
        d = summary["models"][ms.label]["distance"]
        plot.mean_attention_distance(
            d["mean"],
            d["std"] if d["count"] > 1 else None,
            title=ms.label,
            fig=sub,
            ylim=(0, 1.05 * hi if hi > 0 else 1),
        )
    figs["mean_attention_distance"] = fig

    if not models[0].samples.empty:
        titles = []
        for name in models[0].samples.names:
            row = []
            for ms in models:
                preds = summary["models"][ms.label]["samples"][name].get("predictions")
                row.append(
                    f"{name}" + (f" → {preds[0]['label']} ({preds[0]['probability']:.2f})" if preds else "")
                )
            titles.append(row)
        figs["samples"] = plot.sample_overlays(
            [_shown(ms) for ms in models],
            [ms.samples.arrays["rollout"] for ms in models],
            [ms.samples.arrays["cls_attention"].mean(axis=1) for ms in models],
            titles,
            labels,
            [ms.samples.arrays["relevance"] for ms in models] if study.settings.explain else None,
        )
        fig, subs = plot.side_by_side(
            len(models),
            2.3 * min(models[0].config.num_heads, 6),
            2.6 * math.ceil(max(m.config.num_heads for m in models) / 6) + 0.4,
        )
        for ms, sub in zip(models, subs):
            first = ms.samples.names[0]
            entry = summary["models"][ms.label]["samples"][first]
            masks = entry.get("cls_attention_masks")
            plot.attention_heatmaps(
                _shown(ms)[0],
                ms.samples.arrays["cls_attention"][0],
                None if masks is None else np.asarray(masks),
                fig=sub,
                title=f"{ms.label}: {first}"
                + (f" (mass threshold {study.settings.threshold})" if masks is not None else ""),
            )
        figs["attention_heatmaps"] = fig

    fig, subs = plot.side_by_side(len(models), 4.5, 4)
    for ms, sub in zip(models, subs):
        plot.mean_map(
            summary["models"][ms.label]["rollout"]["mean"], title=f"{ms.label}: mean rollout", fig=sub
        )
    figs["rollout_mean"] = fig

    fig, subs = plot.side_by_side(len(models), 6.5, 4)
    for ms, sub in zip(models, subs):
        t = summary["models"][ms.label]["cls_trajectory"]
        cos = (
            ms.samples.arrays["cls_trajectory"]
            if not ms.samples.empty
            else np.zeros((0, ms.config.depth + 1))
        )
        plot.cls_trajectory(cos, ms.samples.names, fig=sub, mean=t["mean"], std=t["std"], title=ms.label)
    figs["cls_trajectory"] = fig

    with_cka = [ms for ms in models if summary["models"][ms.label]["cka"] is not None]
    if with_cka:
        fig, subs = plot.side_by_side(len(with_cka), 5.5, 4.8)
        for ms, sub in zip(with_cka, subs):
            plot.cka_matrix(
                summary["models"][ms.label]["cka"]["matrix"], title=f"{ms.label}: CKA between layers", fig=sub
            )
        figs["cka"] = fig
    cross = summary["cross_model_cka"]
    if cross:
        fig, subs = plot.side_by_side(len(cross), 5.5, 4.8)
        for entry, sub in zip(cross, subs):
            a, b = entry["models"]
            plot.cka_matrix(
                entry["matrix"],
                title=f"CKA: {a} vs {b}",
                fig=sub,
                xlabel=f"{b} layer (0 = embeddings)",
                ylabel=f"{a} layer (0 = embeddings)",
            )
        figs["cka_cross"] = fig

    fig, subs = plot.side_by_side(len(models), 5.5, 5.5)
    for ms, sub in zip(models, subs):
        plot.position_similarity(
            summary["models"][ms.label]["position_similarity"],
            ms.config.grid_size,
            fig=sub,
            title=f"{ms.label}: position embedding similarity",
        )
    figs["position_similarity"] = fig
    fig, subs = plot.side_by_side(len(models), 5.6, 6)
    for ms, sub in zip(models, subs):
        plot.projection_filters(
            summary["models"][ms.label]["projection_filters"],
            fig=sub,
            title=f"{ms.label}: first patch-embedding filters",
        )
    figs["projection_filters"] = fig
    return figs
