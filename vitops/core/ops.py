"""The building blocks, as pure `keras.ops` functions over arrays.

Each takes arrays and returns arrays; none holds state. Shapes: B batch, N tokens,
D width, H heads, Dh = D / H head width, M MLP width.
"""

from __future__ import annotations

from keras import ops
from keras.backend import standardize_dtype

from ..backend.torch_memory import attention_logits, softmax_of_temporary

# float64 is for numerical checks (finite differences). Keras' type promotion maps float64 to
# float32 on jax and torch (keras.backend.result_type), and ops.mean, ops.layer_normalization,
# ops.dot_product_attention and (on torch) ops.matmul compute in that promoted type, so float64
# inputs take dtype-keeping ops instead. The check is one dict lookup per call (at trace time
# when compiled).
_IS_FLOAT64: dict = {}


def is_float64(dtype) -> bool:
    known = _IS_FLOAT64.get(dtype)
    if known is None:
        known = _IS_FLOAT64[dtype] = standardize_dtype(dtype) == "float64"
    return known


def matmul(a, b):
    """ops.matmul, in float64 for float64 inputs (einsum keeps the dtype on every backend)."""
    if is_float64(a.dtype):
        return ops.einsum("...ij,jk->...ik" if len(b.shape) == 2 else "...ij,...jk->...ik", a, b)
    return ops.matmul(a, b)


def mean(x, axis, keepdims: bool = False):
    """The mean over axis (an int or a tuple), in x's own dtype (float64 stays float64)."""
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    count = 1
    for a in axes:
        count *= x.shape[a]
    return ops.sum(x, axis=axis, keepdims=keepdims) / ops.cast(count, x.dtype)


def layer_norm(x, scale, bias, eps: float):
    """LayerNorm over the last axis. eps is explicit: Keras' default differs from ViT's 1e-6."""
    if is_float64(x.dtype):  # Keras' op would compute in float32
        mu = mean(x, -1, keepdims=True)
        var = mean(ops.square(x - mu), -1, keepdims=True)
        return (x - mu) * ops.rsqrt(var + eps) * scale + bias
    return ops.layer_normalization(x, gamma=scale, beta=bias, axis=-1, epsilon=eps)


def dense(x, kernel, bias):
    """x (..., I) @ kernel (I, O) + bias (O,)."""
    return matmul(x, kernel) + bias


def mlp_hidden(x, fc1_kernel, fc1_bias):
    """The MLP's hidden layer, (B, N, D) -> (B, N, M): fc1 and the exact erf GELU of timm /
    DeiT / DINO (the units feature visualisation maximises, Ghiasi et al. 2022)."""
    return ops.gelu(dense(x, fc1_kernel, fc1_bias), approximate=False)


def mlp(x, fc1_kernel, fc1_bias, fc2_kernel, fc2_bias):
    """(B, N, D) -> (B, N, M) -> (B, N, D), with the exact erf GELU of timm / DeiT / DINO."""
    return dense(mlp_hidden(x, fc1_kernel, fc1_bias), fc2_kernel, fc2_bias)


def attention(
    x,
    qkv_kernel,
    qkv_bias,
    proj_kernel,
    proj_bias,
    num_heads: int,
    return_probs: bool = False,
    num_queries: int | None = None,
    attention_delta=None,
    scratch: dict | None = None,
):
    """Multi-head self-attention over (B, N, D).

    Returns (out (B, Q, D), probs (B, H, N, N) or None), Q = num_queries or N: with
    num_queries, only the first Q tokens' outputs are computed (the last block, when only the
    prefix tokens are read). Without return_probs the backend's fused kernel runs; with it,
    the explicit softmax path that timm uses when not fused: q is scaled by Dh**-0.5 before
    q @ k^T, and the full probability matrix is returned.

    attention_delta (broadcastable to (B, H, N, N)), when given, is added to the probabilities
    before they weight the values (the returned probs are the softmax alone). At zero the
    output is unchanged, and the gradient of any output with respect to attention_delta is its
    gradient with respect to the attention probabilities: what gradient-weighted attention
    methods need, without hooks.

    scratch: a dict owned by the caller for one forward pass, given when the probabilities are
    read before the next block runs and never kept (in-forward reductions): the backend may then
    compute every block's logits and probabilities in one reused buffer (see
    `vitops.backend.torch_memory.attention_logits`).
    """
    n, d = x.shape[-2], x.shape[-1]
    head_dim = d // num_heads
    nq = n if num_queries is None else num_queries
    scale = head_dim**-0.5
    # A delta covers every query row, so its path computes every row's probabilities.
    return_probs = return_probs or attention_delta is not None
    # Fused kernels compute float64 in float32 on some backends (see `is_float64`).
    explicit = return_probs or is_float64(x.dtype)
    if nq == n or explicit:
        qkv = dense(x, qkv_kernel, qkv_bias)  # (B, N, 3D), columns [q | k | v], each head-major
        qkv = ops.reshape(qkv, (-1, n, 3, num_heads, head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, H, Dh) each
    else:  # queries for the first nq tokens only; keys and values for all
        q = ops.reshape(dense(x[:, :nq], qkv_kernel[:, :d], qkv_bias[:d]), (-1, nq, num_heads, head_dim))
        kv = ops.reshape(dense(x, qkv_kernel[:, d:], qkv_bias[d:]), (-1, n, 2, num_heads, head_dim))
        k, v = kv[:, :, 0], kv[:, :, 1]
    if not explicit:
        out = ops.dot_product_attention(q, k, v, scale=scale)  # (B, Q, H, Dh)
        return dense(ops.reshape(out, (-1, nq, d)), proj_kernel, proj_bias), None
    q = ops.transpose(q, (0, 2, 1, 3)) * ops.cast(scale, q.dtype)  # (B, H, N, Dh)
    k = ops.transpose(k, (0, 2, 3, 1))  # (B, H, Dh, N)
    v = ops.transpose(v, (0, 2, 1, 3))  # (B, H, N, Dh)
    logits = matmul(q, k) if is_float64(q.dtype) else attention_logits(q, k, scratch)
    probs = softmax_of_temporary(logits, axis=-1)  # (B, H, N, N)
    weights = probs if attention_delta is None else probs + ops.cast(attention_delta, probs.dtype)
    out = ops.transpose(matmul(weights[:, :, :nq], v), (0, 2, 1, 3))  # (B, Q, H, Dh)
    return dense(ops.reshape(out, (-1, nq, d)), proj_kernel, proj_bias), probs if return_probs else None
