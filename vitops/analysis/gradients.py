"""Gradient attributions: which patches a class score depends on.

`gradient_rollout` is the relevance rule of Chefer, Gur and Wolf (ICCV 2021, "Generic
Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers",
Eq. 5-6; their ViT code is hila-chefer/Transformer-MM-Explainability): starting from R = I,
each block, in forward order, adds its gradient-weighted attention,

    R <- R + mean_h[(dA * A)^+] R,

with A the block's attention probabilities (B, H, T, T) and dA the gradient of the target
score with respect to them; the map is R's CLS row over the patches (a model without a class
token, SigLIP, starts from its attention-pool head's gradient-weighted row instead). The gradients come from
one forward and one backward pass: `vitops.forward`'s attention_delta adds a zero array to each
block's probabilities, and the gradient with respect to that zero is dA (no hooks). The whole
computation (forward, backward, the rule) is compiled as one function where the backend
compiles (jax.jit, tf.function with XLA); PyTorch runs it eagerly under autograd.

`input_gradients` is gradient x input (Shrikumar et al. 2016, "Not Just a Black Box"), summed
over the colour channels and averaged over each patch's pixels, optionally averaged over noisy
copies of the image (SmoothGrad, Smilkov et al. 2017): a baseline to compare the rollout with.
`integrated_gradients` (Sundararajan, Taly and Yan 2017, "Axiomatic Attribution for Deep
Networks", Eq. 3) integrates the gradient along the straight path from a baseline to the image
(midpoint Riemann sum): its attributions add up to the score's change along the path
(completeness), up to the sum's error, which it reports.

Shapes as in vitops/__init__.py: B images, H heads, T tokens (P prefix + N patches), C classes.
"""

from __future__ import annotations

import numpy as np
from keras import ops

from ..backend.compile import compiled
from ..backend.grad import value_and_grad
from ..core.ops import matmul, mean  # float64 stays float64 (numerical checks)
from ..core.vit import check_images, forward
from ..errors import AnalysisError
from ._model import as_images, baseline_for, cast_params, model_parts


def _scores(out, classes, target):
    """Each image's target score (B,) and the class it was taken from (B,) int32; a negative
    class means the image's predicted class (one compiled function serves both)."""
    if target is not None:
        s = target(out)
        if len(s.shape) != 1:
            raise AnalysisError(
                f"target(out) must return one score per image, shape (B,), got shape {tuple(s.shape)}"
            )
        return s, classes
    logits = out["logits"]  # (B, C); DeiT distilled: the mean of both heads
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    classes = ops.where(classes < 0, predicted, classes)
    # The one-hot is built from integers: no gradient flows through the choice of class.
    return ops.sum(ops.one_hot(classes, logits.shape[-1], dtype=logits.dtype) * logits, axis=-1), classes


def _accumulation_dtype(compute_dtype: str) -> str:
    return "float64" if compute_dtype == "float64" else "float32"


def _relevance(params, images, classes, *, config, target, compute_dtype):
    """Chefer et al.'s rule in one compiled pass: -> (CLS row over patches (B, N), classes (B,))."""
    params = cast_params(params, compute_dtype)
    gh, gw = check_images(images, config)
    b, p = images.shape[0], config.num_prefix_tokens
    t = p + gh * gw
    pooled = config.pool == "map"
    # Zeros added to each block's probabilities: their gradient is dA, (B, H, T, T) per block,
    # and (B, H, N) for an attention-pool head's.
    deltas = [ops.zeros((b, config.num_heads, t, t), compute_dtype) for _ in range(config.depth)]
    if pooled:
        deltas.append(ops.zeros((b, config.num_heads, gh * gw), compute_dtype))

    def objective(deltas, params, images, classes):
        out = forward(params, config, images, return_attention=True, attention_delta=deltas)
        scores, chosen = _scores(out, classes, target)
        maps = out["attention"] + ([out["pool_attention"]] if pooled else [])
        # Images are independent, so the gradient of the sum is each image's own gradient.
        return ops.sum(scores), (maps, chosen)

    grad_fn = value_and_grad(objective, 0, has_aux=True, compile=False)
    (_, (attentions, chosen)), grads = grad_fn(deltas, params, images, classes)
    attentions, grads = list(attentions), list(grads)
    acc = _accumulation_dtype(compute_dtype)
    # R_L = (I + F_L) ... (I + F_1), F_l = mean_h[(dA_l * A_l)^+]; its CLS row e_0^T R_L is
    # taken from the last block down as vector-matrix products: O(L T^2), not O(L T^3).
    if pooled:
        # No class token (SigLIP): the pooling query's row, F_pool = mean_h[(dA * A)^+] over the
        # patches, stands in for e_0^T (the query is no token, so it has no identity term).
        a, g = attentions.pop(), grads.pop()
        row = mean(ops.relu(ops.cast(g, acc) * ops.cast(a, acc)), 1)  # (B, N)
        row = ops.pad(row, ((0, 0), (p, 0)))  # (B, T)
    else:
        row = ops.one_hot(ops.zeros((b,), "int32"), t, dtype=acc)  # (B, T)
    for a, g in zip(reversed(attentions), reversed(grads)):
        f = mean(ops.relu(ops.cast(g, acc) * ops.cast(a, acc)), 1)  # (B, T, T)
        row = row + matmul(row[:, None, :], f)[:, 0]
    return row[:, p:], chosen


# autograph=False: the caller's target runs while tracing, and its errors (or ours about it)
# should reach the caller unwrapped
_compiled_relevance = compiled(
    _relevance, static_argnames=("config", "target", "compute_dtype"), autograph=False
)


def _input_gradient(params, images, classes, *, config, target, compute_dtype):
    """Gradient x input, channel sum, mean per patch: -> ((B, I, J), classes (B,))."""
    params = cast_params(params, compute_dtype)
    gh, gw = check_images(images, config)
    pz = config.patch_size

    def objective(images, params, classes):
        scores, chosen = _scores(forward(params, config, images), classes, target)
        return ops.sum(scores), chosen

    grad_fn = value_and_grad(objective, 0, has_aux=True, compile=False)
    (_, chosen), g = grad_fn(images, params, classes)
    acc = _accumulation_dtype(compute_dtype)
    gx = ops.sum(ops.cast(g, acc) * ops.cast(images, acc), axis=-1)  # (B, Y, X)
    gx = ops.reshape(gx, (-1, gh, pz, gw, pz))
    return mean(gx, (2, 4)), chosen  # (B, I, J)


_compiled_input_gradient = compiled(
    _input_gradient, static_argnames=("config", "target", "compute_dtype"), autograph=False
)


def _path_gradient(params, images, times, classes, *, config, target, compute_dtype):
    """The score's gradient at images dotted with times over the colour channels, per pixel:
    -> ((B, Y, X) float32 or float64, classes (B,), scores (B,))."""
    params = cast_params(params, compute_dtype)
    check_images(images, config)

    def objective(images, params, classes):
        scores, chosen = _scores(forward(params, config, images), classes, target)
        return ops.sum(scores), (chosen, scores)

    grad_fn = value_and_grad(objective, 0, has_aux=True, compile=False)
    (_, (chosen, scores)), g = grad_fn(images, params, classes)
    acc = _accumulation_dtype(compute_dtype)
    return ops.sum(ops.cast(g, acc) * ops.cast(times, acc), axis=-1), chosen, ops.cast(scores, acc)


_compiled_path_gradient = compiled(
    _path_gradient, static_argnames=("config", "target", "compute_dtype"), autograph=False
)


def _classes(config, batch: int, class_index, target) -> np.ndarray:
    """(B,) int32 classes to explain, -1 for each image's predicted class, after checking what
    the caller asked for."""
    if target is not None:
        if not callable(target):
            raise AnalysisError(f"target must be a callable out -> (B,) scores, got {type(target).__name__}")
        if class_index is not None:
            raise AnalysisError("pass class_index or target, not both")
        return np.full((batch,), -1, np.int32)
    if not config.num_classes:
        raise AnalysisError(
            f"{config.name or 'this model'} has no classification head (a DINO backbone?), so there "
            "is no class score to explain: pass target, a function of vitops.forward's output "
            "returning one score per image, e.g. target=lambda out: out['features'][:, 0]"
        )
    if class_index is None:
        return np.full((batch,), -1, np.int32)
    c = np.asarray(class_index)
    if c.dtype.kind not in "iu" or c.ndim > 1:
        raise AnalysisError(f"class_index must be an int or one int per image, got {class_index!r}")
    c = np.broadcast_to(c, (batch,)) if c.ndim == 0 else c
    if c.shape != (batch,):
        raise AnalysisError(f"class_index has {c.shape[0]} entries for {batch} images")
    if c.size and (c.min() < 0 or c.max() >= config.num_classes):
        raise AnalysisError(f"class_index must be in [0, {config.num_classes}), got {c.tolist()}")
    return c.astype(np.int32)


def _run(fn, parts, images, class_index, target):
    """fn's (result, classes) on the model's (params, config, dtype) and images, checked."""
    params, config, dtype = parts
    x = as_images(images, config, dtype)
    classes = _classes(config, x.shape[0], class_index, target)
    return fn(params, x, classes, config=config, target=target, compute_dtype=dtype)


def _grid(images, config) -> tuple[int, int]:
    return images.shape[1] // config.patch_size, images.shape[2] // config.patch_size


def gradient_rollout(model, images, class_index=None, *, target=None):
    """Chefer et al.'s gradient-weighted attention relevance of each patch: -> (B, I, J).

    model: a vitops model (or a name or path `vitops.load` accepts). images: (B, Y, X, 3)
    preprocessed. The target score is the logit of class_index (an int, or one per image),
    by default each image's predicted class; DeiT distilled: the mean of both heads' logits,
    as the model predicts. Models without a head (DINO backbones) need target: a function
    of `vitops.forward`'s output dict returning (B,) scores (e.g. a feature coordinate); it is
    part of the compiled function's key, so pass the same function object to reuse it.
    Returns a backend tensor; the relevance of the prefix tokens is dropped.
    """
    parts = model_parts(model)
    row, _ = _run(_compiled_relevance, parts, images, class_index, target)
    return ops.reshape(row, (-1, *_grid(images, parts[1])))


def input_gradients(
    model, images, class_index=None, *, target=None, smoothgrad: int = 0, noise: float = 0.15, seed: int = 0
):
    """Gradient x input per patch: -> (B, I, J), a backend tensor.

    d score / d pixel times the pixel, summed over channels and averaged over each patch. The
    target is as for `gradient_rollout`. smoothgrad=n > 0 averages the map over n copies of
    the images with Gaussian noise of standard deviation noise * (max - min) of each image
    (Smilkov et al. 2017 recommend 10-20 %), drawn with numpy from seed, the same on every
    backend; the class explained is then chosen once, on the clean images.
    """
    if isinstance(smoothgrad, bool) or not isinstance(smoothgrad, int) or smoothgrad < 0:
        raise AnalysisError(f"smoothgrad must be a number of samples >= 0, got {smoothgrad!r}")
    if not noise >= 0:
        raise AnalysisError(f"noise must be >= 0, got {noise!r}")
    parts = model_parts(model)
    if not smoothgrad:
        return _run(_compiled_input_gradient, parts, images, class_index, target)[0]
    params, config, dtype = parts
    x = np.asarray(ops.convert_to_numpy(as_images(images, config, dtype)), np.float32)
    classes = _classes(config, x.shape[0], class_index, target)
    if target is None and (classes < 0).any():
        # one class per image for every noisy copy: the clean image's prediction
        _, classes = _compiled_input_gradient(
            params, x, classes, config=config, target=None, compute_dtype=dtype
        )
    rng = np.random.default_rng(seed)
    sigma = noise * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))  # (B,)
    total = None
    for _ in range(smoothgrad):
        noisy = x + sigma[:, None, None, None] * rng.standard_normal(x.shape).astype(np.float32)
        m, _ = _compiled_input_gradient(
            params,
            ops.convert_to_tensor(noisy, dtype),
            classes,
            config=config,
            target=target,
            compute_dtype=dtype,
        )
        total = m if total is None else total + m
    return total / smoothgrad


def integrated_gradients(
    model, images, class_index=None, *, target=None, steps: int = 32, baseline=None, return_completeness=False
):
    """Integrated gradients per patch: -> (B, I, J), a backend tensor.

    Each pixel's attribution is (x - x0) times the mean of the score's gradient at the
    midpoints x0 + (k + 1/2) / steps (x - x0), k < steps, summed over the colour channels and
    averaged over each patch's pixels (as `input_gradients`). x0, the baseline: by default zeros
    in the model's input space (after normalisation: the data set's mean colour for ImageNet
    statistics, mid-grey for [-1, 1]), or an array broadcastable to the images. The class
    explained is chosen once, on the images (target and class_index as `gradient_rollout`).

    return_completeness=True also returns a dict of numpy arrays (B,): "total" the sum of
    every pixel's attribution, "difference" score(x) - score(x0), and "error" |total -
    difference| / |difference|: the Riemann sum's error, which shrinks as steps grows.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 4096:
        raise AnalysisError(f"steps must be an integer in [1, 4096], got {steps!r}")
    params, config, dtype = model_parts(model)
    # the path in float32 on the host whatever the compute dtype (cast once per point in `at`)
    x = np.asarray(ops.convert_to_numpy(as_images(images, config, dtype)), np.float32)
    x0 = baseline_for(baseline, x)
    classes = _classes(config, x.shape[0], class_index, target)
    delta = x - x0

    def at(points):
        return _compiled_path_gradient(
            params,
            ops.convert_to_tensor(points, dtype),
            ops.convert_to_tensor(delta, dtype),
            classes,
            config=config,
            target=target,
            compute_dtype=dtype,
        )

    _, chosen, end = at(x)  # the class explained: the image's own prediction where not given
    classes = np.asarray(ops.convert_to_numpy(chosen), np.int32)
    _, _, start = at(x0)
    total = None
    for k in range(steps):
        g, _, _ = at(x0 + (k + 0.5) / steps * delta)
        total = g if total is None else total + g
    pixels = total / steps  # (B, Y, X)
    gh, gw = _grid(x, config)
    pz = config.patch_size
    maps = mean(ops.reshape(pixels, (-1, gh, pz, gw, pz)), (2, 4))  # (B, I, J)
    if not return_completeness:
        return maps
    summed = np.asarray(ops.convert_to_numpy(ops.sum(pixels, axis=(1, 2))), np.float64)
    difference = np.asarray(ops.convert_to_numpy(end), np.float64) - np.asarray(
        ops.convert_to_numpy(start), np.float64
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.abs(summed - difference) / np.maximum(np.abs(difference), np.finfo(np.float64).tiny)
    return maps, {"total": summed, "difference": difference, "error": error}


def relevance_for_report(model, images, batch_size: int = 8):
    """Chefer et al.'s relevance for each image's top class, batch by batch, as numpy:
    -> (maps (B, I, J) float32, classes (B,) int). The model needs a head."""
    params, config, dtype = model_parts(model)
    if not config.num_classes:
        raise AnalysisError(
            f"{config.name or 'this model'} has no classification head: "
            "relevance for the top class needs logits"
        )
    images = np.asarray(images)
    maps, classes = [], []
    for start in range(0, len(images), batch_size):
        x = as_images(images[start : start + batch_size], config, dtype)
        c = _classes(config, x.shape[0], None, None)
        row, chosen = _compiled_relevance(params, x, c, config=config, target=None, compute_dtype=dtype)
        maps.append(np.asarray(ops.convert_to_numpy(row), np.float32).reshape(-1, *_grid(x, config)))
        classes.append(np.asarray(ops.convert_to_numpy(chosen)).astype(np.int64))
    if not maps:
        raise AnalysisError("no images to explain")
    return np.concatenate(maps), np.concatenate(classes)
