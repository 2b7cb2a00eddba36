"""The figures of a report, drawn from a Study and its summary (matplotlib Figures, no pyplot
state). Each figure shows aggregates over all images or a fixed number of sample images, so its
size does not depend on how many images were analysed."""

from __future__ import annotations

import math

import numpy as np

from ..analysis.embeddings import reference_patches
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
    "depends on the class; then gradient x input (Shrikumar et al. 2016) and integrated gradients from a zero "
    "baseline (Sundararajan et al. 2017; metrics.json holds each image's completeness error). Positive parts "
    "drawn.",
    "faithfulness": "Which map to trust (--faithfulness): deletion (left: patches removed, most relevant first; "
    "lower is better) and insertion (right: patches put back into the baseline image; higher is better) "
    "curves of the top class's probability, averaged over the sample images (Petsiuk et al. 2018), with the "
    "areas under them; the random ranking is the floor.",
    "attention_heatmaps": "Last block: attention of the CLS token to every patch, one panel per head, for the first "
    "sample image (DINO, Fig. 1).",
    "rollout_mean": "Attention rollout averaged over all images: where the models look on average.",
    "cls_trajectory": "The CLS token through the blocks: cosine similarity to its final state (mean and one "
    "standard deviation over all images; lines: the sample images).",
    "token_mass": "Where attention goes, per block: the share received by the class token(s), the registers and "
    "the patches, averaged over heads, query tokens and all images (band: one standard deviation across "
    "images). Registers take over the global attention that otherwise lands on a few high-norm patches "
    "(Darcet et al. 2024).",
    "token_norms": "Token norms after the embedding and after every block, per kind of token: median (line), "
    "1st to 99th percentile (band) and maximum (triangles) over all images. A few patch tokens with norms far "
    "above the rest are the global scratch space large ViTs make for themselves, which registers take over "
    "(Darcet et al. 2024). Dashed: the outlier threshold (--norm-threshold, by default Q3 + 3 (Q3 - Q1) of the "
    "last block's patch norms).",
    "high_norm_patches": "The last block's patch-token norms over each sample image; outlined: the patches above "
    "the threshold.",
    "pca_feature_maps": "Principal components of the patch features (DINOv2, Fig. 1): per sample image, the first "
    "three components of a PCA fitted over all images' patch tokens as red, green and blue; then the foreground "
    "(the first component above zero, oriented so that the image border is background) coloured by a second "
    "PCA fitted on the sample images' foreground patches. Registers and class tokens are left out.",
    "logit_lens": "Logit lens: every block's tokens read by the final norm and head as if it were the last "
    "(nostalgebraist 2020). Per step, the share of images whose top-1 class is already the final prediction and "
    "the mean probability of the final class; for a model without a head, the cosine of its features to the "
    "final ones (bands: one standard deviation over all images).",
    "cka": "Centered kernel alignment between the layers of each model (minibatch estimator of Nguyen et al. "
    "2021 over all images; Kornblith et al. 2019).",
    "cka_cross": "Centered kernel alignment between every layer of one model and every layer of another, over "
    "the same images (minibatch CKA).",
    "position_similarity": "Cosine similarity of each patch's position embedding (tile at its place) to every other "
    "patch's (ViT, Fig. 7); above 16 patches a side, the tiles of an evenly spaced lattice of 16 x 16 patches.",
    "projection_filters": "Patch-embedding filters, each scaled to [0, 1] (ViT, Fig. 7).",
}


# Each figure's heading in the report, written for people (the keys are file names).
TITLES = {
    "mean_attention_distance": "Mean attention distance",
    "samples": "Sample images: where the models look",
    "faithfulness": "Which map to trust: deletion and insertion",
    "attention_heatmaps": "Class-token attention per head",
    "rollout_mean": "Mean rollout over all images",
    "cls_trajectory": "The class token through the blocks",
    "token_mass": "Attention by kind of token",
    "token_norms": "Token norms",
    "high_norm_patches": "High-norm patch tokens",
    "pca_feature_maps": "PCA feature maps",
    "logit_lens": "Logit lens",
    "cka": "CKA between the layers of each model",
    "cka_cross": "CKA between models",
    "position_similarity": "Position embedding similarity",
    "projection_filters": "Patch-embedding filters",
}


def _shown(ms):
    return ms.samples.arrays["display"].astype(np.float32) / 255.0


def _panels(items, width: float, height: float, draw):
    """One figure, a panel per item side by side (`plots.side_by_side`): draw(item, panel)."""
    fig, subs = plot.side_by_side(len(items), width, height)
    for item, sub in zip(items, subs):
        draw(item, sub)
    return fig


def figures(study, summary) -> dict:
    """{figure key: matplotlib Figure} of the figures this study has, keys as in CAPTIONS."""
    models = study.models
    of = {ms.label: summary["models"][ms.label] for ms in models}  # each model's summary
    figs = {}
    hi = max(float(np.nanmax(m["distance"]["mean"] + m["distance"]["std"])) for m in of.values())

    def distance(ms, sub):
        d = of[ms.label]["distance"]
        plot.mean_attention_distance(
            d["mean"],
            d["std"] if d["count"] > 1 else None,
            title=ms.label,
            fig=sub,
            ylim=(0, 1.05 * hi if hi > 0 else 1),
        )

    figs["mean_attention_distance"] = _panels(models, 6.5, 4.5, distance)

    if not models[0].samples.empty:
        titles = []
        for name in models[0].samples.names:
            row = []
            for ms in models:
                preds = of[ms.label]["samples"][name].get("predictions")
                row.append(
                    f"{name}" + (f" → {preds[0]['label']} ({preds[0]['probability']:.2f})" if preds else "")
                )
            titles.append(row)
        figs["samples"] = plot.sample_overlays(
            [_shown(ms) for ms in models],
            [ms.samples.arrays["rollout"] for ms in models],
            [ms.samples.arrays["cls_attention"].mean(axis=1) for ms in models],
            titles,
            [ms.label for ms in models],
            [ms.samples.arrays["relevance"] for ms in models] if study.settings.explain else None,
            [
                ("gradient x input", [ms.samples.arrays["input_gradients"] for ms in models]),
                ("integrated gradients", [ms.samples.arrays["integrated_gradients"] for ms in models]),
            ]
            if study.settings.explain
            else (),
        )
        faithful = [ms for ms in models if "faithfulness" in of[ms.label]]
        if faithful:
            figs["faithfulness"] = _panels(
                faithful,
                9,
                3.6,
                lambda ms, sub: plot.faithfulness(of[ms.label]["faithfulness"], fig=sub, title=ms.label),
            )

        def heatmaps(ms, sub):
            first = ms.samples.names[0]
            masks = of[ms.label]["samples"][first].get("cls_attention_masks")
            threshold = f" (mass threshold {study.settings.threshold})" if masks is not None else ""
            plot.attention_heatmaps(
                _shown(ms)[0],
                ms.samples.arrays["cls_attention"][0],
                None if masks is None else np.asarray(masks),
                fig=sub,
                title=f"{ms.label}: {first}{threshold}",
            )

        heads = max(m.config.num_heads for m in models)
        figs["attention_heatmaps"] = _panels(
            models, 2.3 * min(models[0].config.num_heads, 6), 2.6 * math.ceil(heads / 6) + 0.4, heatmaps
        )

    figs["rollout_mean"] = _panels(
        models,
        4.5,
        4,
        lambda ms, sub: plot.mean_map(
            of[ms.label]["rollout"]["mean"], title=f"{ms.label}: mean rollout", fig=sub
        ),
    )

    def trajectory(ms, sub):
        t = of[ms.label]["cls_trajectory"]
        cos = (
            ms.samples.arrays["cls_trajectory"]
            if not ms.samples.empty
            else np.zeros((0, ms.config.depth + 1))
        )
        plot.cls_trajectory(cos, ms.samples.names, fig=sub, mean=t["mean"], std=t["std"], title=ms.label)

    figs["cls_trajectory"] = _panels(models, 6.5, 4, trajectory)

    def mass(ms, sub):
        t = of[ms.label]["token_mass"]
        plot.token_mass(np.asarray(t["mean"]), np.asarray(t["std"]), t["groups"], fig=sub, title=ms.label)

    figs["token_mass"] = _panels(models, 6.5, 4, mass)
    figs["token_norms"] = _panels(
        models, 6.5, 4, lambda ms, sub: plot.token_norms(of[ms.label]["token_norms"], fig=sub, title=ms.label)
    )
    if not models[0].samples.empty:
        figs["high_norm_patches"] = _panels(
            models,
            2.2 * min(len(models[0].samples.names), 4),
            2.3 * math.ceil(len(models[0].samples.names) / 4) + 0.6,
            lambda ms, sub: plot.high_norm_patches(
                _shown(ms),
                ms.samples.arrays["token_norms"],
                of[ms.label]["token_norms"]["threshold"],
                ms.samples.names,
                fig=sub,
                title=f"{ms.label}: high-norm patch tokens, last block",
            ),
        )
    if not models[0].samples.empty:
        figs["pca_feature_maps"] = _panels(
            models,
            2.0 * 3,
            1.9 * len(models[0].samples.names) + 0.6,
            lambda ms, sub: plot.pca_maps(
                _shown(ms),
                [of[ms.label]["samples"][name] for name in ms.samples.names],
                ms.samples.names,
                of[ms.label]["pca"]["explained_variance_ratio"],
                fig=sub,
                title=ms.label,
            ),
        )
    figs["logit_lens"] = _panels(
        models, 6.5, 4, lambda ms, sub: plot.logit_lens(of[ms.label]["logit_lens"], fig=sub, title=ms.label)
    )

    # CKA: each model's layers against its own, then every pair of models
    matrices = [
        (f"{ms.label}: CKA between layers", of[ms.label]["cka"]["matrix"], ms.label, ms.label)
        for ms in models
        if of[ms.label]["cka"] is not None
    ]
    pairs = [
        (f"CKA: {a} vs {b}", e["matrix"], a, b) for e in summary["cross_model_cka"] for a, b in [e["models"]]
    ]
    for key, items in (("cka", matrices), ("cka_cross", pairs)):
        if items:
            figs[key] = _panels(
                items,
                5.5,
                4.8,
                lambda item, sub: plot.cka_matrix(
                    item[1],
                    title=item[0],
                    fig=sub,
                    xlabel=f"{item[3]} layer (0 = embeddings)",
                    ylabel=f"{item[2]} layer (0 = embeddings)",
                ),
            )

    learned = [ms for ms in models if np.size(of[ms.label]["position_similarity"])]  # rotary: no table
    if learned:
        figs["position_similarity"] = _panels(
            learned,
            5.5,
            5.5,
            lambda ms, sub: plot.position_similarity(
                of[ms.label]["position_similarity"],
                ms.config.grid_size,
                fig=sub,
                title=f"{ms.label}: position embedding similarity",
                patches=reference_patches(ms.config.grid_size),
            ),
        )
    figs["projection_filters"] = _panels(
        models,
        5.6,
        6,
        lambda ms, sub: plot.projection_filters(
            of[ms.label]["projection_filters"], fig=sub, title=f"{ms.label}: first patch-embedding filters"
        ),
    )
    return figs
