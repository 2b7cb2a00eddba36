"""The sample images' explanations: the class-specific maps `--explain` draws and, with
`--faithfulness`, the deletion and insertion curves of every map the report draws.

Only the sample images (`--show K`) are explained: each map needs backward passes, and each
curve FAITHFULNESS_STEPS + 1 forward passes per image, which the report would not show for the
others.
"""

from __future__ import annotations

import numpy as np

from ..analysis.faithfulness import deletion_insertion
from ..analysis.gradients import input_gradients, integrated_gradients, relevance_for_report

# The maps whose faithfulness is measured, in the order metrics.json lists them; "random" is
# a uniform random ranking (seeded by the image's position): the floor a map should beat.
FAITHFULNESS_MAPS = (
    "rollout",
    "cls_attention",
    "relevance",
    "input_gradients",
    "integrated_gradients",
    "random",
)
FAITHFULNESS_STEPS = 16  # equal steps of the patches removed or inserted
FAITHFULNESS_BASELINE = "zeros in the model's input space (after normalisation: the mean colour)"
IG_STEPS = 32  # integrated gradients' Riemann sum


def explain(
    model, images, positions, grid, *, explain: bool, faithfulness: bool, rollout, cls_attention
) -> dict:
    """Per sample image (S of them, preprocessed (S, Y, X, 3)): "relevance", "input_gradients",
    "integrated_gradients" (S, I, J) and "ig_error" (S,) when explain or faithfulness (NaN
    otherwise), and "faithfulness" (S, M, 2, FAITHFULNESS_STEPS + 1), the deletion and the
    insertion curve of each of FAITHFULNESS_MAPS, when faithfulness (NaN otherwise). rollout and
    cls_attention (S, I, J): the maps the forward pass gave. A model without a head has no class
    to explain: all NaN."""
    s = len(images)
    maps = {k: np.full((s, *grid), np.nan, np.float32) for k in FAITHFULNESS_MAPS[2:5]}
    out = dict(
        maps,
        ig_error=np.full((s,), np.nan, np.float32),
        faithfulness=np.full((s, len(FAITHFULNESS_MAPS), 2, FAITHFULNESS_STEPS + 1), np.nan, np.float32),
    )
    if not s or not model.config.num_classes or not (explain or faithfulness):
        return out
    x = np.asarray(images, np.float32)
    relevance, classes = relevance_for_report(model, x)
    out["relevance"] = relevance
    out["input_gradients"] = np.asarray(_numpy(input_gradients(model, x, classes)), np.float32)
    ig, completeness = integrated_gradients(model, x, classes, steps=IG_STEPS, return_completeness=True)
    out["integrated_gradients"] = np.asarray(_numpy(ig), np.float32)
    out["ig_error"] = completeness["error"].astype(np.float32)
    if faithfulness:
        drawn = {
            "rollout": np.asarray(rollout, np.float64),
            "cls_attention": np.asarray(cls_attention, np.float64),
            **{k: out[k].astype(np.float64) for k in FAITHFULNESS_MAPS[2:5]},
            "random": np.stack([np.random.default_rng(int(p)).random(grid) for p in positions]),
        }
        for m, name in enumerate(FAITHFULNESS_MAPS):
            curves = deletion_insertion(model, x, drawn[name], classes, steps=FAITHFULNESS_STEPS)
            out["faithfulness"][:, m, 0] = curves["deletion"]
            out["faithfulness"][:, m, 1] = curves["insertion"]
    return out


def _numpy(t):
    from keras import ops

    return ops.convert_to_numpy(t)
