"""The building blocks, as pure `keras.ops` functions over arrays.

Each takes arrays and returns arrays; none holds state. Shapes as in vitops/__init__.py: B
images, T tokens (P prefix + N patches), Q query tokens computed, D width, H heads, E = D / H
head width, M MLP hidden width.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from keras import ops
from keras.backend import standardize_dtype

from ..backend import fused
from ..backend.fused import affine, attend
from ..backend.torch_memory import attention_logits, release_freed, softmax_of_temporary

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


def dense(x, kernel, bias=None):
    """x (..., I) @ kernel (I, O) + bias (O,); no bias when it is None."""
    if is_float64(x.dtype):
        y = matmul(x, kernel)
        return y if bias is None else y + bias
    return affine(x, kernel, bias)


def activation(x, kind: str):
    """The MLP's nonlinearity: "gelu" exact (erf; timm, DeiT, DINO, DINOv2, CLIP with GELU),
    "gelu_tanh" (its tanh approximation: big_vision's and Hugging Face's SigLIP), "quick_gelu"
    x * sigmoid(1.702 x) (OpenAI's CLIP), "silu" (SwiGLU's gate)."""
    if kind == "gelu":
        return ops.gelu(x, approximate=False)
    if kind == "gelu_tanh":
        return ops.gelu(x, approximate=True)
    if kind == "quick_gelu":
        return x * ops.sigmoid(ops.cast(1.702, x.dtype) * x)
    if kind == "silu":
        return ops.silu(x)
    raise ValueError(f"unknown activation {kind!r}")


def mlp_hidden(x, fc1_kernel, fc1_bias, act: str, gate_kernel=None, gate_bias=None):
    """The MLP's hidden layer, (B, Q, D) -> (B, Q, M): the units feature visualisation maximises
    (Ghiasi et al. 2022). act(fc1(x)); with a gate (SwiGLU, Shazeer 2020), silu(gate(x)) * fc1(x)."""
    h = dense(x, fc1_kernel, fc1_bias)
    if gate_kernel is None:
        return activation(h, act)
    return activation(dense(x, gate_kernel, gate_bias), act) * h


# ---- 2-D rotary position embeddings (DINOv3) ----


@functools.lru_cache(maxsize=64)
def rope_tables(grid: tuple[int, int], head_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    """(sin, cos), each (N, E) float32, of the 2-D rotary embedding of a patch grid (I, J) as
    DINOv3 defines it (Siméoni et al. 2025; facebookresearch/dinov3 RopePositionEmbedding with
    normalize_coords="separate"): patch centres (i + 0.5) / I and (j + 0.5) / J mapped to
    (-1, 1), each axis on its own; periods base**(4k / E) for k < E/4; angles 2 pi coord /
    period laid out [row frequencies | column frequencies], twice (the rotate-half layout).
    Built in float64 numpy, the same numbers on every backend, for any grid."""
    rows, cols = grid
    quarter = head_dim // 4
    periods = base ** (4.0 * np.arange(quarter) / head_dim)  # (E/4,)
    cy = 2.0 * (np.arange(rows) + 0.5) / rows - 1.0
    cx = 2.0 * (np.arange(cols) + 0.5) / cols - 1.0
    yy, xx = np.meshgrid(cy, cx, indexing="ij")  # (I, J): row-major, as the tokens
    coords = np.stack([yy.reshape(-1), xx.reshape(-1)], axis=-1)  # (N, 2) [row, column]
    angles = 2.0 * math.pi * coords[:, :, None] / periods[None, None, :]  # (N, 2, E/4)
    angles = np.tile(angles.reshape(rows * cols, 2 * quarter), 2)  # (N, E)
    return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def rotate(x, sin, cos):
    """x (B, N, H, E) rotated by the rotary tables (N, E): x cos + rotate_half(x) sin, where
    rotate_half pairs dimension d with d + E/2 (Su et al. 2021, the rotate-half layout)."""
    half = x.shape[-1] // 2
    turned = ops.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    sin = ops.cast(sin, x.dtype)[None, :, None, :]
    cos = ops.cast(cos, x.dtype)[None, :, None, :]
    return x * cos + turned * sin


def _rotate_patches(x, rope, num_prefix: int):
    """Rotate the patch tokens of x (B, T, H, E); the P prefix tokens stay as they are."""
    if rope is None:
        return x
    return ops.concatenate([x[:, :num_prefix], rotate(x[:, num_prefix:], *rope)], axis=1)


# ---- attention ----


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
    consume=None,
    rope=None,
    num_prefix: int = 0,
):
    """Multi-head self-attention over (B, T, D).

    Returns (out (B, Q, D), probs (B, H, T, T) or None), Q = num_queries or T: with
    num_queries, only the first Q tokens' outputs are computed (the last block, when only the
    prefix tokens are read). Without return_probs the backend's fused kernel runs; with it,
    the explicit softmax path that timm uses when not fused: q is scaled by E**-0.5 before
    q @ k^T, and the full probability matrix is returned. qkv_bias may be None (no bias).

    rope: (sin, cos) tables (N, E) (`rope_tables`): q and k of the patch tokens are rotated, the
    first num_prefix tokens are not (DINOv3's class token and registers).

    attention_delta (broadcastable to (B, H, T, T)), when given, is added to the probabilities
    before they weight the values (the returned probs are the softmax alone). At zero the
    output is unchanged, and the gradient of any output with respect to attention_delta is its
    gradient with respect to the attention probabilities: what gradient-weighted attention
    methods need, without hooks.

    consume: (fn, row_inputs, scratch, budget), for maps that are read and reduced, never
    returned (the in-forward reductions): the probabilities are computed a chunk of query rows
    at a time (`fused.row_step_bytes` of the budget in bytes; eager PyTorch takes a block's
    rows at once while they fit) and fn(probs
    (B, H, c, T) float, inputs) reduces each chunk to a dict of small arrays, where inputs
    holds the chunk's rows of row_inputs (arrays whose first axis is the T query rows,
    zero-padded past the last). Returns (out, parts): parts stacks fn's results over the
    chunks, (S, ...). On XLA one chunk's maps exist at a time, not one block's (the
    distances, the rollout factors and the token groups all reduce row by row). scratch: a
    dict owned by the caller for one forward pass, where eager PyTorch keeps one logits buffer
    for every block (`vitops.backend.torch_memory.attention_logits`).
    """
    n, d = x.shape[-2], x.shape[-1]
    head_dim = d // num_heads
    nq = n if num_queries is None else num_queries
    scale = head_dim**-0.5
    # A delta covers every query row, so its path computes every row's probabilities.
    return_probs = return_probs or attention_delta is not None
    # Fused kernels compute float64 in float32 on some backends (see `is_float64`).
    explicit = return_probs or is_float64(x.dtype)
    rows = consume is not None and not explicit  # every query row's map is read
    if nq == n or explicit or rows:
        qkv = dense(x, qkv_kernel, qkv_bias)  # (B, T, 3D), columns [q | k | v], each head-major
        qkv = ops.reshape(qkv, (-1, n, 3, num_heads, head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, E) each
        q = _rotate_patches(q, rope, num_prefix)
    else:  # queries for the first nq tokens only (prefix tokens: never rotated); keys and values for all
        qb, kvb = (None, None) if qkv_bias is None else (qkv_bias[:d], qkv_bias[d:])
        q = ops.reshape(dense(x[:, :nq], qkv_kernel[:, :d], qb), (-1, nq, num_heads, head_dim))
        kv = ops.reshape(dense(x, qkv_kernel[:, d:], kvb), (-1, n, 2, num_heads, head_dim))
        k, v = kv[:, :, 0], kv[:, :, 1]
    k = _rotate_patches(k, rope, num_prefix)
    if rows:
        out, parts = attend_rows(q, k, v, scale, *consume)  # (B, T, H, E)
        return dense(ops.reshape(out[:, :nq], (-1, nq, d)), proj_kernel, proj_bias), parts
    if not explicit:
        out = attend(q, k, v, scale)  # (B, Q, H, E)
        return dense(ops.reshape(out, (-1, nq, d)), proj_kernel, proj_bias), None
    q = ops.transpose(q, (0, 2, 1, 3)) * ops.cast(scale, q.dtype)  # (B, H, T, E)
    k = ops.transpose(k, (0, 2, 3, 1))  # (B, H, E, T)
    v = ops.transpose(v, (0, 2, 1, 3))  # (B, H, T, E)
    logits = matmul(q, k)
    probs = softmax_of_temporary(logits, axis=-1)  # (B, H, T, T)
    weights = probs if attention_delta is None else probs + ops.cast(attention_delta, probs.dtype)
    out = ops.transpose(matmul(weights[:, :, :nq], v), (0, 2, 1, 3))  # (B, Q, H, E)
    return dense(ops.reshape(out, (-1, nq, d)), proj_kernel, proj_bias), probs if return_probs else None


def attention_parts(x, qkv_kernel, qkv_bias, num_heads: int, consume, rope=None, num_prefix: int = 0):
    """The probabilities of `attention` over x (B, T, D) for every query row, only reduced by
    consume (fn, row_inputs, scratch, budget) a chunk of rows at a time: the parts stacked
    over the chunks, (S, ...). q and k as `attention` computes them, the same products
    (computing the query and key columns alone gave the same time on jax and took 14 MB more
    of XLA's buffers at 1024 px, ViT-S/16, batch 2)."""
    n, d = x.shape[-2], x.shape[-1]
    head_dim = d // num_heads
    qkv = ops.reshape(dense(x, qkv_kernel, qkv_bias), (-1, n, 3, num_heads, head_dim))
    q = _rotate_patches(qkv[:, :, 0], rope, num_prefix)
    k = _rotate_patches(qkv[:, :, 1], rope, num_prefix)
    return attend_rows(q, k, None, head_dim**-0.5, *consume)[1]


def attend_rows(q, k, v, scale: float, fn, row_inputs: dict, scratch: dict, budget: int):
    """Attention a chunk of query rows at a time, each chunk's probabilities reduced by fn (see
    `attention`): q, k, v (B, T, H, E) -> (out (B, T, H, E), parts {name: (S, ...)}).
    v None: the probabilities are only reduced, out is None (the rollout's second pass)."""
    b, n, heads, e = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
    # bytes of one query row's maps (a batch of unknown size, a traced graph, sized as 8 images)
    per_row = (b if isinstance(b, int) else 8) * heads * n * 4
    step = fused.row_step_bytes(per_row * n, budget)
    c = n if step is None else max(1, min(n, step // per_row))
    steps = -(-n // c)
    pad = steps * c - n
    q = ops.transpose(q, (0, 2, 1, 3)) * ops.cast(scale, q.dtype)  # (B, H, T, E), as the explicit path
    k = ops.transpose(k, (0, 2, 3, 1))  # (B, H, E, T)
    v = None if v is None else ops.transpose(v, (0, 2, 1, 3))  # (B, H, T, E)
    if steps == 1:  # every row at once (eager PyTorch while a block's maps fit): no padding,
        # no loop and no stacking of its results, each a copy of the block's outputs there
        probs = softmax_of_temporary(attention_logits(q, k, scratch), axis=-1)  # (B, H, T, T)
        parts = {name: p[None] for name, p in fn(probs, row_inputs).items()}  # (1, ...)
        if v is None:
            return None, parts
        return ops.transpose(matmul(probs, v), (0, 2, 1, 3)), parts  # (B, T, H, E)
    q = ops.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0)))
    qs = ops.transpose(ops.reshape(q, (-1, heads, steps, c, e)), (2, 0, 1, 3, 4))  # (S, B, H, c, E)
    inputs = {
        name: ops.reshape(ops.pad(r, ((0, pad),) + ((0, 0),) * (len(r.shape) - 1)), (steps, c, *r.shape[1:]))
        for name, r in row_inputs.items()
    }  # (S, c, ...)

    def chunk(args):
        qc, rows = args
        probs = softmax_of_temporary(attention_logits(qc, k, scratch), axis=-1)  # (B, H, c, T)
        out = fn(probs, rows) if v is None else (matmul(probs, v), fn(probs, rows))  # (B, H, c, E)
        release_freed()  # a chunk's medium buffers freed to the heap: hand their pages back
        return out

    if v is None:
        return None, ops.map(chunk, (qs, inputs))
    out, parts = ops.map(chunk, (qs, inputs))  # (S, B, H, c, E)
    out = ops.reshape(ops.transpose(out, (1, 0, 3, 2, 4)), (-1, steps * c, heads, e))  # (B, S c, H, E)
    return out[:, :n], parts


def attention_pool(
    x, p: dict, num_heads: int, act: str, eps: float, return_probs: bool = False, attention_delta=None
):
    """Multihead attention pooling (SigLIP's MAP head; Zhai et al. 2022, "Scaling Vision
    Transformers", and timm's AttentionPoolLatent): one learned query attends over the tokens
    x (B, N, D), then o + mlp(norm(o)) (a residual around the MLP only). p holds "latent" (D,),
    "q", "kv" (keys first), "proj", "norm" and "mlp.fc1"/"mlp.fc2" kernels and biases, keyed as
    in `vit.param_shapes` without the "attn_pool." prefix.

    Returns (features (B, D), probs (B, H, N) or None): the query's attention over the tokens,
    the pooled model's stand-in for a class token's row. attention_delta (broadcastable to
    (B, H, N)) is added to the probabilities as in `attention`."""
    b, n, d = x.shape[0], x.shape[1], x.shape[2]
    head_dim = d // num_heads
    latent = ops.cast(p["latent"], x.dtype)
    q = dense(latent[None], p["q.kernel"], p["q.bias"])  # (1, D)
    q = ops.reshape(q, (1, num_heads, 1, head_dim)) * ops.cast(head_dim**-0.5, x.dtype)  # (1, H, 1, E)
    kv = ops.reshape(dense(x, p["kv.kernel"], p["kv.bias"]), (-1, n, 2, num_heads, head_dim))
    k = ops.transpose(kv[:, :, 0], (0, 2, 3, 1))  # (B, H, E, N)
    v = ops.transpose(kv[:, :, 1], (0, 2, 1, 3))  # (B, H, N, E)
    probs = ops.softmax(matmul(ops.broadcast_to(q, (b, num_heads, 1, head_dim)), k), axis=-1)  # (B, H, 1, N)
    weights = probs if attention_delta is None else probs + ops.cast(attention_delta, probs.dtype)[:, :, None]
    o = ops.reshape(ops.transpose(matmul(weights, v), (0, 2, 1, 3)), (-1, d))  # (B, D)
    o = dense(o, p["proj.kernel"], p["proj.bias"])
    h = layer_norm(o, p["norm.scale"], p["norm.bias"], eps)
    o = o + dense(
        activation(dense(h, p["mlp.fc1.kernel"], p["mlp.fc1.bias"]), act),
        p["mlp.fc2.kernel"],
        p["mlp.fc2.bias"],
    )
    keep = return_probs or attention_delta is not None
    return o, probs[:, :, 0] if keep else None
