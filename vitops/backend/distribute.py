"""Data parallelism over devices with `keras.distribution` (JAX); one device elsewhere."""

from __future__ import annotations

import keras

from ..errors import BackendError
from . import name


def data_parallel(devices):
    """A `keras.distribution.DataParallel` over `devices` ("all", or a count), or None for one
    device. JAX only: on PyTorch and TensorFlow vitops runs on a single device, and asking for
    more is an error rather than a silent fallback."""
    if devices is None or str(devices) == "1":
        return None
    if name() != "jax":
        raise BackendError(
            f"--devices {devices}: data-parallel analysis runs on the JAX backend; "
            f"the {name()} backend runs on one device (set KERAS_BACKEND=jax)"
        )
    available = keras.distribution.list_devices()
    if str(devices) == "all":
        count = len(available)
    else:
        try:
            count = int(devices)
        except ValueError:
            raise BackendError(f"--devices must be 'all' or a positive count, got {devices!r}") from None
        if not 1 <= count <= len(available):
            raise BackendError(f"--devices {count}: JAX sees {len(available)} device(s): {available}")
    if count == 1:
        return None
    return keras.distribution.DataParallel(devices=available[:count])


def distribute_model(model, distribution) -> None:
    """Lay the model's variables out as the distribution says (replicated, for DataParallel)."""
    for v in model.variables:
        v.assign(keras.distribution.distribute_tensor(v.value, distribution.get_variable_layout(v)))


def distribute_batch(x, distribution):
    """Shard a batch over the devices along its first axis. A batch that does not divide by the
    device count is replicated instead: every device computes it whole, so the result is still
    the one-device result (padding would change batch statistics such as CKA's Gram matrices)."""
    mesh = distribution.device_mesh
    if x.shape[0] % mesh.devices.size == 0:
        layout = distribution.get_data_layout(x.shape)
    else:
        layout = keras.distribution.TensorLayout([None] * len(x.shape), mesh)
    return keras.distribution.distribute_tensor(x, layout)


def whole_batch(x):
    """x itself, held whole on every device when a data-parallel distribution is active.

    For statistics across the batch (CKA's Gram matrices), each device then computes them from
    all images in the one-device order of operations: a batch split over devices gives the
    one-device numbers, not numbers that differ by float32 rounding of a cross-device sum.
    """
    distribution = keras.distribution.distribution()
    if distribution is None or name() != "jax":
        return x
    layout = keras.distribution.TensorLayout([None] * len(x.shape), distribution.device_mesh)
    return keras.distribution.distribute_tensor(x, layout)
