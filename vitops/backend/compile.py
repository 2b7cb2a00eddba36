"""Compiling a pure keras.ops function the backend's way, and waiting for its results."""

from __future__ import annotations

import functools

import keras

from . import name
from .heap import trimmed_after_compile


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
        return functools.partial(
            compiled, static_argnames=static_argnames, inference=inference, autograph=autograph
        )
    cache: dict = {}  # "jax": the jitted function; TensorFlow: one tf.function per static arguments

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        backend = name()
        if backend == "jax":
            f = cache.get("jax")
            if f is None:
                import jax

                f = cache["jax"] = jax.jit(fn, static_argnames=static_argnames)
            with trimmed_after_compile():  # what compiling freed, handed back before it runs
                return f(*args, **kwargs)
        if backend == "tensorflow":
            import tensorflow as tf

            static = tuple(sorted((k, kwargs.pop(k)) for k in static_argnames if k in kwargs))
            f = cache.get(static)
            if f is None:
                f = cache[static] = tf.function(
                    functools.partial(fn, **dict(static)), jit_compile=True, autograph=autograph
                )
            return f(*args, **kwargs)
        if inference and backend == "torch":
            import torch

            with torch.inference_mode():
                return fn(*args, **kwargs)
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


def recomputes() -> bool:
    """Whether computing a value again from kept inputs frees memory on this backend. Eager
    PyTorch runs what it is told. XLA (jax, tensorflow) merges a computation repeated on the
    same inputs within one compiled graph (common-subexpression elimination), so the blocks
    run again in the rollout's second pass kept every block's output alive instead, and more
    (ViT-S/16 at 1024 px, batch 2, jax: +567 MB over the plain pass against +383 MB with every
    block's input kept). `VisionTransformer.infer` therefore runs those blocks after the
    compiled pass, in programs of their own (`vitops.core.vit.rollout_segment`)."""
    return name() == "torch"
