"""The one place that looks at keras.config.backend(): compilation and host synchronisation.

Library code stays in keras.ops; what differs per backend (how a function is compiled, how to
wait for asynchronous results) is decided here, importing the backend only when asked.
"""

from __future__ import annotations

import functools

import keras


def name() -> str:
    return keras.config.backend()


def compiled(fn=None, *, static_argnames=(), inference: bool = False):
    """Compile a pure keras.ops function the backend's way: jax.jit, or tf.function with XLA.

    PyTorch runs eagerly (its eager kernels are already fused enough for these graphs, and
    torch.compile's first-call cost would dominate interactive use); with inference=True under
    `torch.inference_mode()`, so nothing is recorded for autograd and no activation is kept
    alive for a backward pass that never comes. Arguments named in static_argnames must be
    hashable Python values, passed by keyword; a new value compiles a new version.
    """
    if fn is None:
        return functools.partial(compiled, static_argnames=static_argnames, inference=inference)
    cache = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        backend = name()
        if backend == "jax":
            f = cache.get("jax")
            if f is None:
                import jax

                f = cache["jax"] = jax.jit(fn, static_argnames=static_argnames)
            return f(*args, **kwargs)
        if backend == "tensorflow":
            import tensorflow as tf

            static = tuple(sorted((k, kwargs.pop(k)) for k in static_argnames if k in kwargs))
            f = cache.get(static)
            if f is None:
                f = cache[static] = tf.function(functools.partial(fn, **dict(static)),
                                                jit_compile=True)
            return f(*args, **kwargs)
        if inference and backend == "torch":
            import torch

            with torch.inference_mode():
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper


def attention_logits(q, k, scratch: dict | None = None):
    """q @ k: (B, H, N, Dh) @ (B, H, Dh, N) -> (B, H, N, N) attention logits.

    With a scratch dict (one forward pass whose maps are read block by block and not kept),
    eager PyTorch writes every block's logits into one buffer kept in it, rather than into a
    fresh 15 MB (ViT-B/16, batch 8) allocation per block that the allocator maps and the
    kernel page-faults in anew. Not while autograd records (an out= product cannot be
    differentiated through). XLA plans its own buffers; there it is the plain product.
    """
    if scratch is not None and name() == "torch":
        import torch

        if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):
            shape = (*q.shape[:-1], k.shape[-1])
            buf = scratch.get("logits")
            if buf is None or tuple(buf.shape) != shape or buf.dtype != q.dtype:
                buf = scratch["logits"] = torch.empty(shape, dtype=q.dtype, device=q.device)
            return torch.matmul(q, k, out=buf)
    return keras.ops.matmul(q, k)


def softmax_of_temporary(x, axis: int = -1):
    """softmax(x) along axis, where x is a temporary no one else reads: computed in place
    when that is safe.

    Eager PyTorch gives every op a fresh output buffer. For the explicit attention path the
    logits are (B, H, N, N), 15 MB per ViT-B/16 block at batch 8, and the probabilities
    would be a second fresh 15 MB: new memory that the kernel page-faults in, and that
    breaks the allocator's reuse of the forward pass's other temporaries. Writing the
    probabilities over the logits took the measured cost of returning ViT-B/16's attention
    maps through predict_on_batch from 28 % to 16 % (benchmarks/README.md). Not while
    autograd records x (an out= kernel cannot be differentiated through). XLA (jax, tensorflow) plans its buffers itself, so
    it gets the plain op.
    """
    if name() == "torch":
        import torch

        if not (torch.is_grad_enabled() and x.requires_grad):
            return torch.softmax(x, axis, out=x)
    return keras.ops.softmax(x, axis=axis)


def device_count() -> int:
    """Devices the backend sees (for JAX: accelerators, or host devices on CPU)."""
    import keras

    return len(keras.distribution.list_devices()) if name() == "jax" else 1


def data_parallel(devices):
    """A `keras.distribution.DataParallel` over `devices` ("all", or a count), or None for one
    device. JAX only: on PyTorch and TensorFlow vitops runs on a single device, and asking for
    more is an error rather than a silent fallback."""
    from .errors import BackendError

    if devices is None or str(devices) == "1":
        return None
    if name() != "jax":
        raise BackendError(f"--devices {devices}: data-parallel analysis runs on the JAX backend; "
                           f"the {name()} backend runs on one device (set KERAS_BACKEND=jax)")
    import keras

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
    import keras

    for v in model.variables:
        v.assign(keras.distribution.distribute_tensor(v.value, distribution.get_variable_layout(v)))


def distribute_batch(x, distribution):
    """Shard a batch over the devices along its first axis. A batch that does not divide by the
    device count is replicated instead: every device computes it whole, so the result is still
    the one-device result (padding would change batch statistics such as CKA's Gram matrices)."""
    import keras

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
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None or name() != "jax":
        return x
    layout = keras.distribution.TensorLayout([None] * len(x.shape), distribution.device_mesh)
    return keras.distribution.distribute_tensor(x, layout)


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
        return keras.ops.reshape(keras.ops.matmul(keras.ops.reshape(a, (-1, t * t)),
                                                  keras.ops.reshape(w, (t * t,))), lead)
    b = keras.ops.shape(a)[0]
    flat = keras.ops.reshape(a, (b, -1, t * t))  # (B, M, T*T)
    wb = keras.ops.broadcast_to(keras.ops.reshape(w, (1, t * t, 1)), (b, t * t, 1))
    return keras.ops.reshape(keras.ops.matmul(flat, wb), lead)


def synchronize(x):
    """Block until x (an array or a nest of arrays) is computed; returns x."""
    backend = name()
    if backend == "jax":
        import jax

        return jax.block_until_ready(x)
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return x
    keras.tree.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, x)  # TF: force it
    return x
