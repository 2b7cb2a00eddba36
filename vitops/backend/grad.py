"""Gradients of pure keras.ops functions, taken the backend's way, and float64 for numerical checks."""

from __future__ import annotations

import contextlib
import functools

import keras
import numpy as np

from . import name
from .compile import compiled


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
    grads = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(flat, grads))
    out, start = [], 0
    for i, s in zip(indices, sources):
        out.append(keras.tree.pack_sequence_as(args[i], grads[start : start + len(s)]))
        start += len(s)
    detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t
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
    grads = tape.gradient(
        value, [args[i] for i in indices], unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
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
