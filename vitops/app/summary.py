"""The summary of a study: every number behind the figures, as metrics.json holds it."""

from __future__ import annotations

import math

import numpy as np

from ..analysis.embeddings import reference_patches
from ..analysis.faithfulness import area
from ..analysis.heatmap import mass_masks
from ..analysis.pca import feature_maps
from ..analysis.tokens import TOKEN_GROUPS, token_counts
from .explain import FAITHFULNESS_BASELINE, FAITHFULNESS_MAPS, FAITHFULNESS_STEPS, IG_STEPS


def _label(info, cls: int) -> str:
    labels = info.get("labels")
    return labels[cls] if labels and 0 <= cls < len(labels) else str(cls)


def _predictions(info, top, prob):
    return [
        {"class": int(c), "label": _label(info, int(c)), "probability": float(p)}
        for c, p in zip(top, prob)
        if c >= 0
    ]


def _model_summary(ms, settings) -> dict:
    c = ms.config
    dist = ms.distance.result()
    cos = ms.cls_trajectory.result()
    mass = ms.token_mass.result()
    norms = ms.token_norms.result(settings.norm_threshold)
    lens = ms.logit_lens.result()
    if c.num_classes:
        lens_out = {
            "top1_agreement": {"mean": lens["mean"][:, 0], "std": lens["std"][:, 0]},
            "final_class_probability": {"mean": lens["mean"][:, 1], "std": lens["std"][:, 1]},
        }
    else:  # headless: the cosine of each step's features to the final features
        lens_out = {"cosine_to_final": {"mean": lens["mean"][:, 0], "std": lens["std"][:, 0]}}
    pca = ms.pca.result()
    pca_out = {
        "step": settings.pca_step,
        "tokens": "patch tokens after the final norm (no class token, no registers)",
        "count": pca["count"],
        "explained_variance_ratio": pca["ratio"][:16],
        "variance": pca["variance"][:16],
        "foreground_rule": "first component > 0, oriented so that the border patches score below zero on "
        "average; a second PCA fitted on the sample images' foreground patches",
    }
    pca_maps: dict = {}
    if not ms.samples.empty:
        pca_maps = feature_maps(ms.samples.arrays["pca_tokens"], pca, ms.grid)
        pca_out["foreground_explained_variance_ratio"] = pca_maps["foreground_ratio"]
    lens_out["steps"] = "0 = embeddings, i = after block i; each read by the final norm and head"
    n_class, n_reg = token_counts(c)
    out = {
        "name": c.name,
        "family": c.family,
        "image_size": list(c.image_size),
        "patch_size": c.patch_size,
        "depth": c.depth,
        "heads": c.num_heads,
        "dim": c.dim,
        "num_classes": c.num_classes,
        "source_sha256": ms.info.get("source_sha256"),
        "weights_sha256": ms.info.get("fingerprint"),
        "preprocessing": ms.info.get("preprocessing"),
        "distance": {"mean": dist["mean"], "std": dist["std"], "count": dist["count"], "unit": "pixels"},
        "rollout": {"mean": ms.rollout.result()["mean"]},
        "cls_attention": {"mean": ms.cls_attention.result()["mean"]},
        "cls_trajectory": {"mean": cos["mean"], "std": cos["std"]},
        # what stands in for the class token where a model has none (SigLIP)
        "query": "class token" if c.class_token else "attention-pool query (no class token)",
        "tokens": {"class": n_class, "registers": n_reg, "patches": int(np.prod(ms.grid))},
        "token_mass": {"groups": list(TOKEN_GROUPS), "mean": mass["mean"], "std": mass["std"]},
        # (steps, groups) each: step 0 = embeddings, i = after block i
        "token_norms": dict(norms, bins="log-spaced, 2.2 % wide: percentiles within one bin"),
        "logit_lens": lens_out,
        "pca": pca_out,
        "cka": None,
        "samples": {},
        "position_similarity": ms.probes.arrays["position_similarity"],  # (K, N): K reference patches
        # the reference patches' row-major indices on the table's native grid
        "position_similarity_patches": reference_patches(c.grid_size) if c.pos_embed != "none" else [],
        "projection_filters": ms.probes.arrays["projection_filters"],
    }
    if not ms.cka.empty:
        out["cka"] = {
            "matrix": ms.cka.result(),
            "estimator": "minibatch (unbiased HSIC)",
            "batches": ms.cka.batches,
        }
    s = ms.samples
    for j, name in enumerate(s.names):
        entry = {
            "position": int(s.positions[j]),
            "rollout": s.arrays["rollout"][j],
            "cls_attention": s.arrays["cls_attention"][j],
            "cls_trajectory": s.arrays["cls_trajectory"][j],
            # the last block's patches whose norm is above the threshold, as [row, column]
            "high_norm_patches": np.argwhere(s.arrays["token_norms"][j] > norms["threshold"]),
            # (I, J, 3) in [0, 1]: the first three components over the data set; the foreground
            # mask and the second PCA's components on it (DINOv2, Fig. 1)
            "pca_rgb": pca_maps["rgb"][j],
            "foreground": pca_maps["foreground"][j].astype(int),
            "foreground_rgb": pca_maps["foreground_rgb"][j],
        }
        if c.num_classes:
            entry["predictions"] = _predictions(ms.info, s.arrays["top"][j], s.arrays["prob"][j])
        if settings.explain and c.num_classes:
            top1 = int(s.arrays["top"][j][0])  # the class explained: the model's prediction
            entry["relevance"] = {
                "map": s.arrays["relevance"][j],
                "class": top1,
                "label": _label(ms.info, top1),
                "method": "gradient-weighted attention rollout (Chefer et al. 2021)",
            }
            entry["input_gradients"] = {"map": s.arrays["input_gradients"][j], "class": top1}
            entry["integrated_gradients"] = {
                "map": s.arrays["integrated_gradients"][j],
                "class": top1,
                "steps": IG_STEPS,
                "baseline": "zeros in the model's input space",
                # |sum of the attributions - (score(x) - score(baseline))| / |score change|
                "completeness_error": s.arrays["ig_error"][j],
            }
        if settings.faithfulness and c.num_classes:
            f = s.arrays["faithfulness"][j]  # (M, 2, steps + 1)
            entry["faithfulness"] = {
                m: {"deletion_auc": area(f[i, :1])[0], "insertion_auc": area(f[i, 1:])[0]}
                for i, m in enumerate(FAITHFULNESS_MAPS)
            }
        if settings.threshold is not None:
            maps = s.arrays["cls_attention"][j]  # (H, I, J)
            masks = np.asarray(mass_masks(maps.reshape(maps.shape[0], -1), settings.threshold))
            entry["cls_attention_masks"] = masks.reshape(maps.shape).astype(int)
        out["samples"][name] = entry
    if settings.faithfulness and c.num_classes and not s.empty:
        f = s.arrays["faithfulness"].astype(np.float64)  # (S, M, 2, steps + 1)
        out["faithfulness"] = {
            "protocol": "RISE deletion and insertion (Petsiuk et al. 2018): patches ranked by the map, "
            "removed to (inserted from) the baseline in equal steps; the top class's probability",
            "baseline": FAITHFULNESS_BASELINE,
            "steps": FAITHFULNESS_STEPS,
            "images": len(s.names),
            "maps": {
                m: {
                    "deletion_auc": float(area(f[:, i, 0]).mean()),
                    "insertion_auc": float(area(f[:, i, 1]).mean()),
                    "deletion": f[:, i, 0].mean(axis=0),
                    "insertion": f[:, i, 1].mean(axis=0),
                }
                for i, m in enumerate(FAITHFULNESS_MAPS)
            },
        }
    return out


def summary_of(study) -> dict:
    """Every number behind the figures: what metrics.json holds (before `strict_json`)."""
    return {
        "models": {ms.label: _model_summary(ms, study.settings) for ms in study.models},
        "cross_model_cka": [
            {
                "models": [a, b],
                "matrix": acc.result(),
                "batches": acc.batches,
                "estimator": "minibatch (unbiased HSIC)",
            }
            for (a, b), acc in study.cross.items()
            if not acc.empty
        ],
        "images": {
            "total": study.n_images,
            "analysed": study.analysed,
            "skipped": study.skipped,
            "cka_batches_skipped": study.cka_batches_skipped,
            "shards": study.shards,
        },
        "settings": study.settings.recorded(),
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
