"""Attention rollout (Abnar & Zuidema 2020), as the ViT paper uses it (Appendix D.8).

Per block: fuse the heads (mean, max or min), optionally zero the smallest discard_ratio of the
entries (never those of the CLS column, the attention to token 0), add the identity for the
residual connection, renormalise the rows. Joint attention is the product of these matrices
from the first block to the last: A_L ... A_2 A_1.
"""

from __future__ import annotations

import numbers

from keras import ops

from ..backend.compile import compiled
from ..errors import AnalysisError, clip
from ._checks import attention_list, patch_grid

HEAD_FUSIONS = ("mean", "max", "min")
_ROW_SUM_TOL = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; lower-precision maps take the exact path


def rollout_options(head_fusion, discard_ratio) -> tuple[str, float]:
    """The rollout's options checked, as (head_fusion, discard_ratio as a float): the one check
    every caller shares (the kernels, the in-forward reductions, the run settings)."""
    if not isinstance(head_fusion, str) or head_fusion not in HEAD_FUSIONS:
        raise AnalysisError(f"head_fusion must be one of {', '.join(HEAD_FUSIONS)}, got {clip(head_fusion)}")
    if (
        isinstance(discard_ratio, bool)
        or not isinstance(discard_ratio, numbers.Real)
        or not 0.0 <= discard_ratio < 1.0
    ):
        raise AnalysisError(f"discard_ratio must be a number in [0, 1), got {clip(discard_ratio)}")
    return head_fusion, float(discard_ratio)


_FUSE = {"mean": ops.mean, "max": ops.max, "min": ops.min}


def _fused(attention, head_fusion: str, discard_ratio: float, keep_first: bool = True):
    """One block's (B, H, T, T) -> the rollout factor (B, T, T), rows summing to 1.
    keep_first: column 0 (the attention to the class token) is never discarded."""
    return _factor(_FUSE[head_fusion](attention, axis=1), discard_ratio, keep_first)


def _factor(a, discard_ratio: float, keep_first: bool = True):
    """Heads already fused (B, T, T) -> the rollout factor: discard, add I, renormalise."""
    t = a.shape[-1]
    if discard_ratio > 0:
        start = 1 if keep_first else 0
        rest = ops.reshape(a[:, :, start:], (-1, t * (t - start)))  # (B, T * (T - start))
        k = int(t * (t - start) * discard_ratio)
        if k > 0:
            kth_smallest = -ops.top_k(-rest, k, sorted=True)[0][:, -1]  # (B,)
            keep = a > kth_smallest[:, None, None]
            if keep_first:
                keep = ops.concatenate([ops.ones_like(keep[:, :, :1]), keep[:, :, 1:]], axis=-1)
            a = ops.where(keep, a, ops.zeros_like(a))
    a = a + ops.eye(t, dtype=a.dtype)
    return a / ops.sum(a, axis=-1, keepdims=True)


def _fused_row(attention, head_fusion: str, discard_ratio: float):
    """An attention-pool head's (B, H, N) -> its fused row (B, N), summing to 1: heads fused and
    the smallest entries discarded as `_fused` does, but no identity (the pool's attention has no
    residual around it, unlike a block's)."""
    a = _FUSE[head_fusion](attention, axis=1)  # (B, N)
    n = a.shape[-1]
    k = int(n * discard_ratio)
    if 0 < k < n:
        kth_smallest = -ops.top_k(-a, k, sorted=True)[0][:, -1]  # (B,)
        a = ops.where(a > kth_smallest[:, None], a, ops.zeros_like(a))
    return a / ops.sum(a, axis=-1, keepdims=True)


@compiled(static_argnames=("head_fusion", "discard_ratio"), inference=True)
def _rollout(attentions, head_fusion, discard_ratio):
    joint = None
    for a in attentions:
        f = _fused(a, head_fusion, discard_ratio)
        joint = f if joint is None else ops.matmul(f, joint)  # (B, T, T)
    return joint


def attention_rollout(attentions, head_fusion: str = "mean", discard_ratio: float = 0.0):
    """Joint attention from each output token to each input token: list of (B, H, T, T) -> (B, T, T)."""
    head_fusion, discard_ratio = rollout_options(head_fusion, discard_ratio)
    return _rollout(attention_list(attentions), head_fusion=head_fusion, discard_ratio=discard_ratio)


def _mean_rows_step(row, a):
    """row (B, T) @ (mean_h A + I) / 2, valid when every attention row sums to 1.

    One batched vector-matrix product per head, (B, H, 1, T) @ (B, H, T, T): each attention
    entry is read once and the fused (B, T, T) matrix is never formed.
    """
    b, h, t, _ = a.shape
    mixed = ops.matmul(ops.broadcast_to(row[:, None, None, :], (b, h, 1, t)), a)  # (B, H, 1, T)
    return (ops.mean(mixed[:, :, 0], axis=1) + row) / 2


@compiled(inference=True)
def _cls_row_of_probabilities(attentions):
    """The CLS row for mean fusion without discarding, assuming softmax rows: one read of the
    maps. Returns (row (B, T), worst |sum - 1| over the CLS query rows of every block and head),
    so the caller can check the assumption from the same compiled call.
    """
    last = attentions[-1]
    b, t = last.shape[0], last.shape[-1]
    e0 = ops.one_hot(ops.zeros((b,), "int32"), t, dtype=last.dtype)
    # e_0^T (mean_h A_L + I) / 2 needs only the CLS query row of the last block
    row = (ops.mean(last[:, :, 0], axis=1) + e0) / 2  # (B, T)
    for a in reversed(attentions[:-1]):
        row = _mean_rows_step(row, a)
    cls_sums = ops.stack([ops.sum(a[:, :, 0], axis=-1) for a in attentions])  # (L, B, H)
    return row, ops.max(ops.abs(cls_sums - 1))


@compiled(static_argnames=("head_fusion", "discard_ratio"), inference=True)
def _cls_row(attentions, head_fusion, discard_ratio):
    """The CLS row by the definition: each block's fused, renormalised factor, (B, T)."""
    row = None  # (B, T): e_0^T A_L ... A_l, from the last block down
    for a in reversed(attentions):
        f = _fused(a, head_fusion, discard_ratio)  # (B, T, T)
        row = f[:, 0] if row is None else ops.matmul(row[:, None], f)[:, 0]
    return row


def cls_rollout(
    attentions, head_fusion: str = "mean", discard_ratio: float = 0.0, num_prefix_tokens: int = 1, grid=None
):
    """The CLS row of the rollout as a map over patches: list of (B, H, T, T) -> (B, I, J).

    e_0^T A_L ... A_1 evaluated from the CLS vector down: vector-matrix products only, O(L T^2)
    rather than the O(L T^3) of the full rollout. For softmax probabilities with mean fusion
    and no discarding, each block's factor is exactly (mean_h A + I) / 2, and the map costs one
    read of each attention tensor. grid: inferred as square if omitted.
    """
    head_fusion, discard_ratio = rollout_options(head_fusion, discard_ratio)
    attentions = attention_list(attentions)
    gh, gw = patch_grid(attentions[0].shape[-1], num_prefix_tokens, grid)
    row = None
    if head_fusion == "mean" and discard_ratio == 0:
        row, err = _cls_row_of_probabilities(attentions)
        # The fast path is exact for probability maps; anything else (checked on the CLS query
        # rows, a T-th of the data) takes the definition.
        if float(err) > _ROW_SUM_TOL:
            row = None
    if row is None:
        row = _cls_row(attentions, head_fusion=head_fusion, discard_ratio=discard_ratio)
    return ops.reshape(row[:, num_prefix_tokens:], (-1, gh, gw))
