"""Reductions whose summation order a backend would otherwise change with the batch layout."""

from __future__ import annotations

import keras

from . import name


def weighted_total(a, w):
    """sum over the last two axes of a * w: (B, ..., R, T), (R, T) -> (B, ...).

    A matrix-vector product reads `a` once without a (B, ..., R, T) temporary. Under XLA (jax,
    tensorflow) it is one product per image, (M, R*T) @ (R*T,) with w broadcast over the batch
    (a (B, R*T) copy, 1/H of the maps): XLA:CPU's single large gemv changes its summation
    order with the number of rows, so a batch split over devices would no longer give the
    one-device numbers; per image it does. (a * w summed is not fused there: it writes the
    whole product first.) Eager PyTorch runs one gemv.
    """
    lead, size = a.shape[:-2], a.shape[-2] * a.shape[-1]
    if name() == "torch":
        return keras.ops.reshape(
            keras.ops.matmul(keras.ops.reshape(a, (-1, size)), keras.ops.reshape(w, (size,))), lead
        )
    b = keras.ops.shape(a)[0]
    flat = keras.ops.reshape(a, (b, -1, size))  # (B, M, R*T)
    wb = keras.ops.broadcast_to(keras.ops.reshape(w, (1, size, 1)), (b, size, 1))
    return keras.ops.reshape(keras.ops.matmul(flat, wb), lead)
