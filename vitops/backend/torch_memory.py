"""Eager PyTorch's memory for the attention maps: one reused buffer, softmax in place.

XLA (jax, tensorflow) plans its own buffers, so there these are the plain ops.
"""

from __future__ import annotations

import keras

from . import name
from .heap import trim


def attention_logits(q, k, scratch: dict | None = None):
    """q @ k: (B, H, T, E) @ (B, H, E, T) -> (B, H, T, T) attention logits.

    With a scratch dict (one forward pass whose maps are read block by block and not kept),
    eager PyTorch writes every block's logits into one buffer kept in it, rather than into a
    fresh 15 MB (ViT-B/16, batch 8) allocation per block that the allocator maps and the
    kernel page-faults in anew. Not while autograd records (an out= product cannot be
    differentiated through). XLA plans its own buffers; there it is the plain product.
    """
    if scratch is not None and name() == "torch":
        import torch

        if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)):
            shape = (*q.shape[:-1], k.shape[-1])
            buf = scratch.get("logits")
            if buf is None or tuple(buf.shape) != shape or buf.dtype != q.dtype:
                buf = scratch["logits"] = torch.empty(shape, dtype=q.dtype, device=q.device)
            return torch.matmul(q, k, out=buf)
    return keras.ops.matmul(q, k)


def softmax_of_temporary(x, axis: int = -1):
    """softmax(x) along axis, where x is a temporary no one else reads: computed in place
    when that is safe.

    Eager PyTorch gives every op a fresh output buffer. For the explicit attention path the
    logits are (B, H, T, T), 15 MB per ViT-B/16 block at batch 8, and the probabilities
    would be a second fresh 15 MB: new memory that the kernel page-faults in, and that
    breaks the allocator's reuse of the forward pass's other temporaries. Writing the
    probabilities over the logits took the measured cost of returning ViT-B/16's attention
    maps through predict_on_batch from 28 % to 16 % (benchmarks/README.md). Not while
    autograd records x (an out= kernel cannot be differentiated through). XLA (jax,
    tensorflow) plans its buffers itself, so it gets the plain op.
    """
    if name() == "torch":
        import torch

        if not (torch.is_grad_enabled() and x.requires_grad):
            return torch.softmax(x, axis, out=x)
    return keras.ops.softmax(x, axis=axis)


def release_freed() -> None:
    """Give the pages of freed heap memory back to the system (`vitops.backend.heap.trim`), on
    eager PyTorch. The chunked reductions free tens of medium buffers (1 to 30 MB) per block;
    glibc keeps such buffers on its heap, where they fragment: at 1024 px (ViT-S/16, batch 2)
    the process grew 700 MB over the plain pass, 275 MB with the pages handed back."""
    if name() == "torch":
        trim()
