"""Data parallelism over devices with `keras.distribution` (JAX); one device elsewhere.

Several processes (hosts, or processes on one host) form one JAX run with
`jax.distributed.initialize`; `join_cluster` calls it from what a launcher puts in the
environment, and `is_writer` says which process writes the results.
"""

from __future__ import annotations

import os

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


def to_host(x):
    """A backend array as numpy. In a multi-process JAX run an output sharded over the
    processes' devices is gathered first, so every process holds the whole batch's result."""
    if name() == "jax":
        import jax

        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            return multihost_utils.process_allgather(x, tiled=True)
    return keras.ops.convert_to_numpy(x)


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


# What a launcher sets for `join_cluster` when JAX's own detection (SLURM, Open MPI,
# Kubernetes) does not apply: the coordinator's host:port, the number of processes, this
# process's index. JAX reads the first itself; the other two names follow it.
CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def join_cluster(environ=None) -> tuple[int, int]:
    """Join a multi-process JAX run before any computation: `jax.distributed.initialize` with
    JAX_NUM_PROCESSES and JAX_PROCESS_ID from the environment when set (JAX reads
    JAX_COORDINATOR_ADDRESS), else what JAX detects of a SLURM, Open MPI or Kubernetes job.
    Returns (this process's index, the number of processes)."""
    if name() != "jax":
        raise BackendError(f"a multi-process run is JAX's (set KERAS_BACKEND=jax), not {name()}'s")
    import jax

    env = os.environ if environ is None else environ
    kwargs: dict[str, int | str] = {}
    for var, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        value = env.get(var)
        if value is not None:
            try:
                kwargs[arg] = int(value)
            except ValueError:
                raise BackendError(f"{var} must be an integer, got {value!r}") from None
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
    if not jax.distributed.is_initialized():
        try:
            jax.distributed.initialize(**kwargs)  # type: ignore[arg-type]
        except (ValueError, RuntimeError) as e:
            raise BackendError(
                f"could not join the multi-process run ({e}); set {', '.join(CLUSTER_ENV)} or run "
                "inside a SLURM, Open MPI or Kubernetes job"
            ) from None
    return jax.process_index(), jax.process_count()


def is_writer() -> bool:
    """Whether this process writes a run's results: the first process of a multi-process JAX
    run (the others compute their share of every batch and write nothing), or a lone one."""
    if name() != "jax":
        return True
    import jax

    return not jax.distributed.is_initialized() or jax.process_index() == 0
