"""What the gradient and feature analyses take from a model: its arrays, config and dtype."""

from __future__ import annotations

import operator

import keras
import numpy as np

from ..errors import AnalysisError


def resolve(model):
    """A loaded model as it is; a name or path `vitops.load` accepts (a shipped model, a registry
    name, a vitops file), loaded; anything else an AnalysisError."""
    from ..core.model import VisionTransformer
    from ..hub.load import resolve_model

    if isinstance(model, VisionTransformer):
        return model
    if not isinstance(model, (str, bytes)) and not hasattr(model, "__fspath__"):
        raise AnalysisError(
            f"model must be a vitops model, a model name or a path, got {type(model).__name__}"
        )
    return resolve_model(model)


def model_parts(model):
    """(params {key: backend array}, config, compute dtype) of a model (see `resolve`)."""
    model = resolve(model)
    return model._params(), model.config, model.compute_dtype


def cast_params(params: dict, dtype: str) -> dict:
    """Float weights read in the compute dtype, as Keras' autocast does for call()."""
    return {
        k: v if keras.backend.standardize_dtype(v.dtype) == dtype else keras.ops.cast(v, dtype)
        for k, v in params.items()
    }


def as_images(images, config, dtype: str):
    """(B, Y, X, 3) preprocessed images as a backend tensor of the compute dtype; shape checked."""
    from ..core.vit import check_images

    x = keras.ops.convert_to_tensor(images, dtype)
    check_images(x, config)
    return x


def _index(value):
    """value as a Python int, or None when it is not an integer (bools are not)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        return None
    return operator.index(value)


def check_block(block, config) -> int:
    """A block index in [0, depth), as an int (numpy integers accepted)."""
    i = _index(block)
    if i is None or not 0 <= i < config.depth:
        raise AnalysisError(
            f"block must be an int in [0, {config.depth}) for this {config.depth}-block model, got {block!r}"
        )
    return i


def check_units(unit, config) -> tuple[int, ...]:
    """An int or a list of ints, each an MLP hidden unit in [0, mlp_dim): a tuple."""
    units = [unit] if _index(unit) is not None else list(unit)
    if not units:
        raise AnalysisError("no unit given: pass an int or a list of ints")
    out = []
    for u in units:
        i = _index(u)
        if i is None or not 0 <= i < config.mlp_dim:
            raise AnalysisError(
                f"unit must be an int in [0, {config.mlp_dim}) (the MLP hidden "
                f"width of this model), got {u!r}"
            )
        out.append(i)
    return tuple(out)


def baseline_for(baseline, x: np.ndarray) -> np.ndarray:
    """The baseline of a path or perturbation method for images x (B, Y, X, 3) float32: zeros
    in the model's input space when None, else an array broadcastable to x; a contiguous
    float32 array of x's shape."""
    x0 = np.zeros_like(x) if baseline is None else np.asarray(baseline, np.float32)
    try:
        x0 = np.ascontiguousarray(np.broadcast_to(x0, x.shape))
    except ValueError:
        raise AnalysisError(
            f"baseline of shape {x0.shape} does not broadcast to the images' {x.shape}"
        ) from None
    if not np.isfinite(x0).all():
        raise AnalysisError("baseline holds NaN or infinity")
    return x0
