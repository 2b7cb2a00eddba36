"""Backend plumbing: the only package that looks at `keras.config.backend()`.

Library code is written in `keras.ops`; what differs per backend lives here, one concern per
module, importing the backend itself only when asked:

    select        choosing a Keras backend before Keras is imported
    compile       compiling a pure function (jax.jit, tf.function with XLA, torch inference mode),
                  and waiting for asynchronous results
    grad          value and gradient of a pure function (jax, torch autograd, tf.GradientTape)
    distribute    data parallelism over devices (keras.distribution, JAX)
    torch_memory  eager PyTorch's buffer reuse for the attention maps
    heap          handing freed C-heap pages back (after jax compiles, between batches)
    fused         fused kernels keras.ops does not name (PyTorch's linear, attention without
                  maps) and the attention's step sizes on XLA
    reduce        a weighted sum whose summation order is the same on one device or several

Nothing here imports Keras at module level in this file, so `select` can run before Keras is.
"""

from __future__ import annotations


def name() -> str:
    """The active Keras backend: "jax", "torch" or "tensorflow"."""
    import keras

    return keras.config.backend()
