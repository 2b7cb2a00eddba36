"""The building blocks, as pure `keras.ops` functions over arrays.

Each takes arrays and returns arrays; none holds state. Shapes: B batch, N tokens,
D width, H heads, Dh = D / H head width, M MLP width.
"""

from __future__ import annotations

from keras import ops


def layer_norm(x, scale, bias, eps: float):
    """LayerNorm over the last axis. eps is explicit: Keras' default differs from ViT's 1e-6."""
    return ops.layer_normalization(x, gamma=scale, beta=bias, axis=-1, epsilon=eps)


def dense(x, kernel, bias):
    """x (..., I) @ kernel (I, O) + bias (O,)."""
    return ops.matmul(x, kernel) + bias


def mlp(x, fc1_kernel, fc1_bias, fc2_kernel, fc2_bias):
    """(B, N, D) -> (B, N, M) -> (B, N, D), with the exact erf GELU of timm / DeiT / DINO."""
    h = ops.gelu(dense(x, fc1_kernel, fc1_bias), approximate=False)
    return dense(h, fc2_kernel, fc2_bias)


def attention(x, qkv_kernel, qkv_bias, proj_kernel, proj_bias, num_heads: int,
              return_probs: bool = False):
    """Multi-head self-attention over (B, N, D).

    Returns (out (B, N, D), probs (B, H, N, N) or None). Without return_probs the backend's
    fused kernel runs; with it, the explicit softmax path that timm uses when not fused:
    q is scaled by Dh**-0.5 before q @ k^T.
    """
    n, d = x.shape[-2], x.shape[-1]
    head_dim = d // num_heads
    qkv = dense(x, qkv_kernel, qkv_bias)  # (B, N, 3D), columns [q | k | v], each head-major
    qkv = ops.reshape(qkv, (-1, n, 3, num_heads, head_dim))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, H, Dh) each
    if not return_probs:
        out = ops.dot_product_attention(q, k, v, scale=head_dim**-0.5)  # (B, N, H, Dh)
        return dense(ops.reshape(out, (-1, n, d)), proj_kernel, proj_bias), None
    q = ops.transpose(q, (0, 2, 1, 3)) * ops.cast(head_dim**-0.5, q.dtype)  # (B, H, N, Dh)
    k = ops.transpose(k, (0, 2, 3, 1))  # (B, H, Dh, N)
    v = ops.transpose(v, (0, 2, 1, 3))  # (B, H, N, Dh)
    probs = ops.softmax(ops.matmul(q, k), axis=-1)  # (B, H, N, N)
    out = ops.transpose(ops.matmul(probs, v), (0, 2, 1, 3))  # (B, N, H, Dh)
    return dense(ops.reshape(out, (-1, n, d)), proj_kernel, proj_bias), probs
