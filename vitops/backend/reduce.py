"""Reductions whose summation order a backend would otherwise change with the batch layout."""

from __future__ import annotations

import keras

from . import name


def weighted_total(a, w):
    """sum over the last two axes of a * w: (B, ..., T, T), (T, T) -> (B, ...).

    A matrix-vector product reads `a` once without a (B, ..., T, T) temporary. Under XLA (jax,
    tensorflow) it is one product per image, (M, T*T) @ (T*T,) with w broadcast over the batch
    (a (B, T*T) copy, 1/H of one block's maps): XLA:CPU's single large gemv changes its
    summation order with the number of rows, so a batch split over devices would no longer
    give the one-device numbers; per image it does. (a * w summed is not fused there: it
    writes the whole product first.) Eager PyTorch runs one gemv.
    """
    lead, t = a.shape[:-2], a.shape[-1]
    if name() == "torch":
        return keras.ops.reshape(
            keras.ops.matmul(keras.ops.reshape(a, (-1, t * t)), keras.ops.reshape(w, (t * t,))), lead
        )
    b = keras.ops.shape(a)[0]
    flat = keras.ops.reshape(a, (b, -1, t * t))  # (B, M, T*T)
    wb = keras.ops.broadcast_to(keras.ops.reshape(w, (1, t * t, 1)), (b, t * t, 1))
    return keras.ops.reshape(keras.ops.matmul(flat, wb), lead)
