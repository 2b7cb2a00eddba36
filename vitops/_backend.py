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
