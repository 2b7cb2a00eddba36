"""The one place that looks at keras.config.backend(): compilation and host synchronisation.

Library code stays in keras.ops; what differs per backend (how a function is compiled, how to
wait for asynchronous results) is decided here, importing the backend only when asked.
"""

from __future__ import annotations

import functools

import keras


def name() -> str:
    return keras.config.backend()


def compiled(fn=None, *, static_argnames=()):
    """Compile a pure keras.ops function the backend's way: jax.jit, or tf.function with XLA.

    PyTorch runs eagerly (its eager kernels are already fused enough for these small graphs,
    and torch.compile's first-call cost would dominate interactive use). Arguments named in
    static_argnames must be hashable Python values; a new value compiles a new version.
    """
    if fn is None:
        return functools.partial(compiled, static_argnames=static_argnames)
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
        return fn(*args, **kwargs)

    return wrapper


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
