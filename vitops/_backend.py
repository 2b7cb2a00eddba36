"""The one place that looks at keras.config.backend(): compilation, gradients and host
synchronisation.

Library code stays in keras.ops; what differs per backend (how a function is compiled, how a
gradient is taken, how to wait for asynchronous results) is decided here, importing the
backend only when asked.
"""

from __future__ import annotations

import contextlib
import functools

import keras
import numpy as np


def name() -> str:
    return keras.config.backend()


def compiled(fn=None, *, static_argnames=(), inference: bool = False, autograph: bool = True):
    """Compile a pure keras.ops function the backend's way: jax.jit, or tf.function with XLA.

    PyTorch runs eagerly (its eager kernels are already fused enough for these graphs, and
    torch.compile's first-call cost would dominate interactive use); with inference=True under
    `torch.inference_mode()`, so nothing is recorded for autograd and no activation is kept
    alive for a backward pass that never comes. Arguments named in static_argnames must be
    hashable Python values, passed by keyword; a new value compiles a new version.
    autograph=False traces fn as plain Python on TensorFlow: for functions without
    tensor-dependent control flow that call user code, so that an exception raised while
    tracing (a vitops error, say) reaches the caller as it is, not wrapped by AutoGraph.
    """
    if fn is None:
        return functools.partial(compiled, static_argnames=static_argnames, inference=inference,
                                 autograph=autograph)
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
                                                jit_compile=True, autograph=autograph)
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


def value_and_grad(fn, argnums=0, *, has_aux: bool = False, static_argnames=(), compile: bool = True):
    """Value and gradient of a pure keras.ops function with respect to chosen arguments.

    fn(*args, **kwargs) returns a scalar value, or (value, aux) with has_aux=True (aux: any
    nest of arrays, returned alongside and not differentiated). The result g has fn's
    signature and returns (value, grads), or ((value, aux), grads) with has_aux; grads has
    the structure of args[argnums] (a nest of arrays: an array, a list, a dict), or a tuple
    of such structures when argnums is a tuple. Gradients are taken the backend's way:
    `jax.value_and_grad`, `torch.autograd.grad`, `tf.GradientTape`; an input the value does
    not depend on gets zeros.

    compile=True compiles g as `compiled` does (jax.jit, tf.function with XLA; eager on
    PyTorch, which records the graph under autograd even inside `torch.inference_mode()`).
    compile=False gives the plain transformation, to use inside a function that is itself
    compiled (then the gradient and whatever follows it are compiled together). Arguments
    named in static_argnames are passed by keyword and must be hashable.
    """
    indices = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def raw(*args, **kwargs):
        backend = name()
        if backend == "jax":
            import jax

            return jax.value_and_grad(fn, argnums=argnums, has_aux=has_aux)(*args, **kwargs)
        if backend == "torch":
            return _torch_value_and_grad(fn, indices, isinstance(argnums, int), has_aux, args, kwargs)
        if backend == "tensorflow":
            return _tf_value_and_grad(fn, indices, isinstance(argnums, int), has_aux, args, kwargs)
        raise NotImplementedError(f"gradients are not implemented for the {backend!r} backend")

    raw = functools.wraps(fn)(raw)
    return compiled(raw, static_argnames=static_argnames) if compile else raw


def _split(out, has_aux):
    if not has_aux:
        return out, None
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError("with has_aux=True the function must return (value, aux)")
    return out[0], out[1]


def _torch_value_and_grad(fn, indices, single, has_aux, args, kwargs):
    import torch

    def usable(t):
        # numpy inputs become tensors, as jax.jit and tf.function convert them; tensors made
        # under torch.inference_mode cannot take part in autograd, so they are copied.
        if isinstance(t, np.ndarray):
            return keras.ops.convert_to_tensor(t)
        return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t

    def leaf(t):
        # A fresh leaf: the caller's tensor (a model parameter, say) gets no .grad written to it.
        return keras.ops.convert_to_tensor(t).detach().requires_grad_(True)

    # Inside inference_mode nothing would be recorded; gradients need the graph.
    with torch.inference_mode(False), torch.enable_grad():
        args = [keras.tree.map_structure(usable, a) for a in args]
        for i in indices:
            args[i] = keras.tree.map_structure(leaf, args[i])
        value, aux = _split(fn(*args, **kwargs), has_aux)
        sources = [keras.tree.flatten(args[i]) for i in indices]
        flat = [t for s in sources for t in s]
        grads = torch.autograd.grad(value, flat, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(flat, grads)]
    out, start = [], 0
    for i, s in zip(indices, sources):
        out.append(keras.tree.pack_sequence_as(args[i], grads[start:start + len(s)]))
        start += len(s)
    detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
    value = detach(value)
    result = (value, keras.tree.map_structure(detach, aux)) if has_aux else value
    return result, (out[0] if single else tuple(out))


def _tf_value_and_grad(fn, indices, single, has_aux, args, kwargs):
    import tensorflow as tf

    args = list(args)
    for i in indices:
        args[i] = tf.nest.map_structure(tf.convert_to_tensor, args[i])
    # Only the chosen inputs: the model's variables are read, not differentiated.
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for i in indices:
            tape.watch(args[i])
        value, aux = _split(fn(*args, **kwargs), has_aux)
    grads = tape.gradient(value, [args[i] for i in indices],
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    result = (value, aux) if has_aux else value
    return result, (grads[0] if single else tuple(grads))


@contextlib.contextmanager
def float64():
    """Within this context float64 arrays stay float64 on every backend.

    JAX computes in 32 bits unless 64-bit mode is on (`jax.enable_x64`); PyTorch and
    TensorFlow keep float64 anyway. For numerical checks such as finite differences; Keras'
    default float type is unchanged, so cast arrays to "float64" explicitly.
    """
    if name() == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield
