"""Attention rollout (Abnar & Zuidema 2020), as the ViT paper uses it (Appendix D.8).

Per block: fuse the heads (mean, max or min), optionally zero the smallest discard_ratio of the
entries (never those of the CLS column, the attention to token 0), add the identity for the
residual connection, renormalise the rows. Joint attention is the product of these matrices
from the first block to the last: A_L ... A_2 A_1.
"""

from __future__ import annotations

from keras import ops

from ._checks import attention_list, patch_grid

HEAD_FUSIONS = ("mean", "max", "min")


def _check(head_fusion, discard_ratio):
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")


def _fused(attention, head_fusion: str, discard_ratio: float):
    """One block's (B, H, T, T) -> the rollout factor (B, T, T), rows summing to 1."""
    a = {"mean": ops.mean, "max": ops.max, "min": ops.min}[head_fusion](attention, axis=1)
    t = a.shape[-1]
    if discard_ratio > 0:
        # Candidates are the entries outside column 0 (attention to CLS is always kept).
        rest = ops.reshape(a[:, :, 1:], (-1, t * (t - 1)))  # (B, T * (T - 1))
        k = int(t * (t - 1) * discard_ratio)
        if k > 0:
            kth_smallest = -ops.top_k(-rest, k, sorted=True)[0][:, -1]  # (B,)
            keep = a > kth_smallest[:, None, None]
            keep = ops.concatenate([ops.ones_like(keep[:, :, :1]), keep[:, :, 1:]], axis=-1)
            a = ops.where(keep, a, ops.zeros_like(a))
    a = a + ops.eye(t, dtype=a.dtype)
    return a / ops.sum(a, axis=-1, keepdims=True)


def attention_rollout(attentions, head_fusion: str = "mean", discard_ratio: float = 0.0):
    """Joint attention from each output token to each input token: list of (B, H, T, T) -> (B, T, T)."""
    _check(head_fusion, discard_ratio)
    attentions = attention_list(attentions)
    joint = None
    for a in attentions:
        f = _fused(a, head_fusion, discard_ratio)
        joint = f if joint is None else ops.matmul(f, joint)  # (B, T, T)
    return joint


def cls_rollout(attentions, head_fusion: str = "mean", discard_ratio: float = 0.0,
                num_prefix_tokens: int = 1, grid=None):
    """The CLS row of the rollout as a map over patches: list of (B, H, T, T) -> (B, rows, cols).

    e_0^T A_L ... A_1 evaluated right to left from the CLS vector: vector-matrix products only,
    O(L T^2) rather than the O(L T^3) of the full rollout. grid: inferred as square if omitted.
    """
    _check(head_fusion, discard_ratio)
    attentions = attention_list(attentions)
    b, _, t, _ = attentions[0].shape
    gh, gw = patch_grid(t, num_prefix_tokens, grid)
    row = None  # (B, 1, T)
    for a in reversed(attentions):
        f = _fused(a, head_fusion, discard_ratio)
        row = f[:, :1] if row is None else ops.matmul(row, f)
    return ops.reshape(row[:, 0, num_prefix_tokens:], (-1, gh, gw))
