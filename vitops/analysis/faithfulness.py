"""Which explanation to trust: deletion and insertion curves (Petsiuk, Das and Saenko 2018,
"RISE: Randomized Input Sampling for Explanation of Black-box Models", Sec. 4.1).

A map ranks the patches of an image. Deletion removes them in that order, most relevant first,
replacing their pixels with a baseline, and follows the probability of the explained class:
a faithful map makes it fall fast (a small area under the curve). Insertion starts from the
baseline image and puts the patches back in the same order: a faithful map makes the
probability rise fast (a large area). Here the patches go in `steps` equal steps (step s
holds round(s N / steps) of the N patches, s = 0 ... steps), each image of every step is one
row of a batch through the compiled forward pass, and the areas are trapezoids over the
fraction of patches, 0 to 1. A random ranking gives the floor any map should beat.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from ..errors import AnalysisError
from ._model import as_images, baseline_for, model_parts, resolve


def patch_order(maps) -> np.ndarray:
    """(B, I, J) maps -> (B, N) patch indices (row-major), most relevant first; ties keep the
    row-major order."""
    m = np.asarray(maps, np.float64)
    if m.ndim != 3:
        raise AnalysisError(f"maps must be (images, rows, columns), got shape {m.shape}")
    if not np.isfinite(m).all():
        raise AnalysisError("maps hold NaN or infinity: nothing to rank the patches by")
    return np.argsort(-m.reshape(len(m), -1), axis=1, kind="stable")


def step_masks(order, steps: int) -> np.ndarray:
    """(B, N) patch orders -> (B, steps + 1, N) bool: the patches taken at each step."""
    b, n = order.shape
    counts = np.rint(np.arange(steps + 1) * n / steps).astype(int)  # (S+1,)
    rank = np.empty_like(order)
    rank[np.arange(b)[:, None], order] = np.arange(n)[None]  # each patch's place in the order
    return rank[:, None, :] < counts[None, :, None]


def area(curves) -> np.ndarray:
    """(B, S + 1) curves over equal steps of the fraction 0 to 1 -> (B,) trapezoid areas."""
    c = np.asarray(curves, np.float64)
    return (c[:, 1:] + c[:, :-1]).sum(axis=1) / (2 * (c.shape[1] - 1))


def deletion_insertion(
    model, images, maps, class_index=None, *, steps: int = 16, baseline=None, batch_size: int = 32
) -> dict:
    """Deletion and insertion curves of the maps (B, I, J) on the preprocessed images
    (B, Y, X, 3). The class explained: class_index (an int or one per image), by default each
    image's predicted class; the score is its softmax probability (DeiT distilled: of the mean
    of both heads' logits, as the model predicts). baseline: the value of removed pixels,
    zeros in the model's input space by default (the data set's mean colour for ImageNet
    statistics), or an array broadcastable to the images.

    Returns numpy arrays: "deletion" and "insertion" (B, steps + 1) the probabilities,
    "deletion_auc" and "insertion_auc" (B,), "classes" (B,), "fractions" (steps + 1,).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1024:
        raise AnalysisError(f"steps must be an integer in [1, 1024], got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AnalysisError(f"batch_size must be a positive integer, got {batch_size!r}")
    model = resolve(model)
    _, config, dtype = model_parts(model)
    if not config.num_classes:
        raise AnalysisError(
            f"{config.name or 'this model'} has no classification head: deletion and insertion "
            "follow a class probability"
        )
    x = np.asarray(ops.convert_to_numpy(as_images(images, config, dtype)), np.float32)
    b, y, w = x.shape[:3]
    p = config.patch_size
    order = patch_order(maps)
    if order.shape != (b, (y // p) * (w // p)):
        raise AnalysisError(
            f"maps of shape {np.shape(maps)} do not cover the {b} images' {y // p} x {w // p} patches"
        )
    x0 = baseline_for(baseline, x)

    def probabilities(batch):
        logits = np.asarray(ops.convert_to_numpy(model.infer(batch)["logits"]), np.float64)
        z = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    if class_index is None:
        classes = np.concatenate(
            [probabilities(x[i : i + batch_size]).argmax(-1) for i in range(0, b, batch_size)]
        )
    else:
        c = np.asarray(class_index)
        if c.dtype.kind not in "iu" or c.ndim > 1 or (c.ndim == 1 and c.shape != (b,)):
            raise AnalysisError(f"class_index must be an int or one int per image, got {class_index!r}")
        classes = np.broadcast_to(c, (b,)).astype(np.int64)
        if classes.min() < 0 or classes.max() >= config.num_classes:
            raise AnalysisError(f"class_index must be in [0, {config.num_classes}), got {classes.tolist()}")
    masks = step_masks(order, steps)  # (B, S+1, N)
    gh, gw = y // p, w // p
    curves = {}
    for name, (start, end) in {"deletion": (x, x0), "insertion": (x0, x)}.items():
        pairs = [(i, s) for i in range(b) for s in range(steps + 1)]  # batch_size at a time
        out = np.empty((b, steps + 1))
        for k in range(0, len(pairs), batch_size):
            chunk = pairs[k : k + batch_size]
            batch = np.empty((len(chunk), y, w, 3), np.float32)
            for r, (i, s) in enumerate(chunk):
                m = masks[i, s].reshape(gh, 1, gw, 1)  # taken patches: from `end`
                m = np.broadcast_to(m, (gh, p, gw, p)).reshape(y, w)[..., None]
                batch[r] = np.where(m, end[i], start[i])
            probs = probabilities(batch)
            for r, (i, s) in enumerate(chunk):
                out[i, s] = probs[r, classes[i]]
        curves[name] = out
    fractions = np.arange(steps + 1) / steps
    return {
        "deletion": curves["deletion"],
        "insertion": curves["insertion"],
        "deletion_auc": area(curves["deletion"]),
        "insertion_auc": area(curves["insertion"]),
        "classes": classes,
        "fractions": fractions,
    }
