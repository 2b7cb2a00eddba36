"""Where attention goes, by kind of token: the class (and distillation) tokens, the registers,
the patches.

Registers (Darcet et al. 2024, "Vision Transformers Need Registers") are extra prefix tokens
that take over the global computation which, without them, large ViTs do in a few
high-norm patch tokens: they receive a large share of the attention and leave the patch
maps clean. `attention_mass` measures that share, per block and head, averaged over the
query tokens.
"""

from __future__ import annotations

from keras import ops

from ._checks import as_tensor, check_rank

TOKEN_GROUPS = ("class", "registers", "patches")


def token_counts(config) -> tuple[int, int]:
    """(class and distillation tokens, registers) at the front of a model's sequence."""
    return int(config.class_token) + int(config.distilled), config.reg_tokens


def group_shares(received, num_class: int, num_registers: int):
    """(..., T) attention received per token -> (..., 3): summed over [class tokens, registers,
    patches]."""
    cut = num_class + num_registers
    return ops.stack(
        [
            ops.sum(received[..., :num_class], axis=-1),
            ops.sum(received[..., num_class:cut], axis=-1),
            ops.sum(received[..., cut:], axis=-1),
        ],
        axis=-1,
    )


def attention_mass(attention, num_class: int, num_registers: int):
    """(B, H, Q, T) attention probabilities -> (B, H, 3): the share of each head's attention that
    the class tokens, the registers and the patches receive, averaged over the Q query rows
    (each row sums to 1, so the three shares do too). Tokens in the order [class tokens,
    registers, patches]."""
    attention = as_tensor(attention, "attention")
    check_rank(attention, 4, "attention", "(B, heads, queries, tokens)")
    received = ops.mean(ops.cast(attention, "float32"), axis=2)  # (B, H, T)
    return group_shares(received, num_class, num_registers)
