"""Fused kernels a backend has and `keras.ops` does not name, and how attention is stepped.

`affine`: XLA (jax, tensorflow) fuses a bias add into the matmul that produces it; eager
PyTorch runs each op as written, so there the affine map goes through
`torch.nn.functional.linear` (one addmm) rather than a matmul and a broadcast add.
`attend`: attention without its maps, PyTorch's fused kernel or XLA in cache-sized steps.
`row_step_bytes`: the chunk of query rows the in-forward reductions read at a time.
"""

from __future__ import annotations

import keras

from . import name


def affine(x, kernel, bias=None):
    """x (..., I) @ kernel (I, O) + bias (O,), the bias optional.

    On PyTorch, when all three are tensors of one dtype, a single addmm: measured on DINOv2
    ViT-B/14 at 518 px, the separate bias adds were 6 % of the forward pass (benchmarks/README.md).
    """
    if name() == "torch":
        import torch

        if (
            isinstance(x, torch.Tensor)
            and isinstance(kernel, torch.Tensor)
            and kernel.dtype == x.dtype
            and (bias is None or (isinstance(bias, torch.Tensor) and bias.dtype == x.dtype))
        ):
            return torch.nn.functional.linear(x, kernel.T, bias)  # x @ kernel + bias, kernel not copied
    y = keras.ops.matmul(x, kernel)
    return y if bias is None else y + bias


# Bytes of attention logits one step of the XLA attention computes: a few heads, or a chunk of
# one head's queries, whose (c, T) logits and probabilities stay in the CPU's caches. Measured
# on a 2-core AMD EPYC (benchmarks/README.md): 1-8 MiB all within 25 % of each other, 4 MiB
# best; the whole (B, H, T, T) at once ran 4x slower at T = 1370, written to memory and read back.
ATTENTION_STEP_BYTES = 4 << 20

# The same for maps that in-forward reductions read (`vitops.core.ops.attention`'s consume):
# chunks of query rows over the whole batch and every head, larger so that each chunk's
# products stay efficient. Measured on DINOv2 ViT-S/14 at 518 px, batch 8, every reduction,
# 2-core AMD EPYC, jax: 16.7 s a batch with whole maps, 10.8 s in 32 MiB chunks. Eager
# PyTorch pays per op and per small product: there whole maps were faster (10.0 s against
# 11.4 s in 32 MiB chunks), so a block's maps are one chunk while they fit the budget.
XLA_ROW_STEP_BYTES = 32 << 20

# A chunk's maps exist in about this many copies at once (logits, probabilities, the
# reductions' products), so a chunk is at most this fraction of the analyses' memory budget.
CHUNK_COPIES = 4


def row_step_bytes(block_bytes: int, budget: int) -> int | None:
    """Bytes of maps per chunk of query rows for the in-forward reductions, given one block's
    maps (block_bytes) and the memory the analyses may use (budget); None: a block at once."""
    cap = max(1, budget // CHUNK_COPIES)
    if name() == "torch":
        return None if block_bytes <= cap else cap
    return min(XLA_ROW_STEP_BYTES, cap)


def attend(q, k, v, scale: float):
    """softmax(q k^T * scale) v per head, without returning the probabilities:
    q (B, Q, H, E), k and v (B, T, H, E) -> (B, Q, H, E).

    PyTorch: its fused kernel (flash attention on CPU) on strided views, as timm calls it.
    XLA (jax, tensorflow) has no fused attention on CPU and writes every (T, T) map to memory;
    here the maps are computed a few heads or a query chunk at a time (`keras.ops.map`, a
    loop XLA keeps), each step's maps small enough to stay in cache. Each query row is
    computed by the same operations as the explicit path: scaled q, then q @ k^T, the softmax,
    the product with v.
    """
    if name() == "torch":
        import torch

        if all(isinstance(t, torch.Tensor) for t in (q, k, v)) and q.dtype == k.dtype == v.dtype:
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale
            )  # (B, H, Q, E)
            return out.transpose(1, 2)
        return keras.ops.dot_product_attention(q, k, v, scale=scale)
    from keras import ops

    nq, n, heads, e = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    q = ops.transpose(q, (0, 2, 1, 3)) * ops.cast(scale, q.dtype)  # (B, H, Q, E)
    k = ops.transpose(k, (0, 2, 3, 1))  # (B, H, E, T)
    v = ops.transpose(v, (0, 2, 1, 3))  # (B, H, T, E)

    def heads_at_once(a):  # (G, Q, E), (G, E, T), (G, T, E) -> (G, Q, E)
        return ops.matmul(ops.softmax(ops.matmul(a[0], a[1]), axis=-1), a[2])

    per_head = nq * n * 4
    if per_head <= ATTENTION_STEP_BYTES:  # g heads per step, g dividing H
        g = max(d for d in range(1, heads + 1) if heads % d == 0 and d * per_head <= ATTENTION_STEP_BYTES)
        steps = [ops.reshape(t, (-1, g, *t.shape[2:])) for t in (q, k, v)]  # (B H / g, g, ., .)
        out = ops.map(heads_at_once, tuple(steps))
    else:  # one head at a time, its queries in c-row chunks (the last one padded)
        chunks = -(-per_head // ATTENTION_STEP_BYTES)
        c = -(-nq // chunks)
        chunks = -(-nq // c)
        qc = ops.pad(q, ((0, 0), (0, 0), (0, chunks * c - nq), (0, 0)))
        qc = ops.reshape(qc, (-1, chunks, c, e))  # (B H, chunks, c, E)
        kh, vh = ops.reshape(k, (-1, e, n)), ops.reshape(v, (-1, n, e))

        def one_head(a):
            qs, kt, vt = a  # (chunks, c, E), (E, T), (T, E)
            return ops.map(lambda x: heads_at_once((x[None], kt[None], vt[None]))[0], qs)

        out = ops.map(one_head, (qc, kh, vh))  # (B H, chunks, c, E)
        out = ops.reshape(out, (-1, chunks * c, e))[:, :nq]
    out = ops.reshape(out, (-1, heads, nq, e))  # (B, H, Q, E)
    return ops.transpose(out, (0, 2, 1, 3))
