"""Analyses computed inside the forward pass, block by block: the maps of all blocks never exist
together, and only small arrays leave the model.

    spec = Reductions(distance=True, rollout="cls", cls_attention=True, cls_tokens=True, grams=True)
    out = vitops.forward(params, config, images, reductions=spec)
    out["reductions"]["distance"]   # (B, L, H) mean attention distance, pixels

A spec is a frozen, hashable value: a compiled forward pass (jax.jit, tf.function) is built once
per spec. Each reduction computes what `vitops.analysis` computes from materialised maps, here
from each block's maps a chunk of query rows at a time (sums taken per chunk, so equal to
float32 rounding; tests/test_reductions.py). Shapes: B images, L blocks,
H heads, T tokens (prefix + patches), N patches, D width, P prefix tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from keras import ops

from ..backend.distribute import whole_batch
from ..backend.reduce import weighted_total
from ..errors import AnalysisError, clip
from .cka import centred_gram
from .distance import padded_distance
from .embeddings import cosine_to_final
from .rollout import _FUSE, _factor, _fused_row, rollout_options
from .tokens import group_shares, token_counts

ROLLOUTS = ("cls", "full")
# The CLS row of the rollout, e_0^T A_L ... A_1, is a product from the last block down. Kept
# below this size, every block's fused factor (B, T, T) is held until the last block and the
# row costs L vector-matrix products, O(L T^2); above it (very large grids or batches), the
# joint product A_l ... A_1 is carried forward instead, O(L T^3) (at 518 px and patch 14,
# T = 1370, as much work again as the attention itself).
ROLLOUT_FACTORS_BYTES = 1 << 30


@dataclass(frozen=True)
class Reductions:
    """What to reduce per block. Outputs, under out["reductions"]:

    distance       (B, L, H)   mean attention distance per block and head, in pixels
                               (prefix tokens removed; rows renormalised when renormalize)
    rollout="cls"  (B, N)      attention rollout, the CLS row over the patches
    rollout="full" (B, T, T)   the whole joint attention A_L ... A_1
    cls_attention  (B, H, N)   the last block's attention from the CLS token to each patch
    cls_tokens     (B, L+1, D) the CLS token after the embedding and after every block
    cls_trajectory (B, L+1)    the cosine of each of those CLS states to the last one
                               (`vitops.analysis.embeddings.cosine_to_final`)
    grams          (L+1, B, B) each layer's Gram matrix of its flattened tokens, centred over
                               the batch (the per-layer terms of minibatch CKA)
    token_mass     (B, L, 3)   the share of attention the class tokens, the registers and the
                               patches receive per block, over heads and query tokens
                               (`vitops.analysis.tokens.attention_mass`)

    For a model without a class token (SigLIP), the attention-pool head's query stands in for
    the class token's row (rollout, cls_attention), and the mean patch token for the class
    token (cls_tokens, cls_trajectory).
    """

    distance: bool = False
    renormalize: bool = False
    rollout: str | None = None
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    cls_attention: bool = False
    cls_tokens: bool = False
    cls_trajectory: bool = False
    grams: bool = False
    token_mass: bool = False
    rollout_memory: int = ROLLOUT_FACTORS_BYTES  # bytes the rollout's kept factors may take

    def __post_init__(self):
        flags = [f.name for f in dataclasses.fields(self) if f.type in (bool, "bool")]
        bad = [f"{k}={clip(getattr(self, k))}" for k in flags if not isinstance(getattr(self, k), bool)]
        if bad:
            raise AnalysisError(f"Reductions flags must be True or False: {', '.join(bad)}")
        if self.rollout is not None and self.rollout not in ROLLOUTS:
            raise AnalysisError(f"rollout must be None or one of {ROLLOUTS}, got {clip(self.rollout)}")
        _, ratio = rollout_options(self.head_fusion, self.discard_ratio)
        if (
            isinstance(self.rollout_memory, bool)
            or not isinstance(self.rollout_memory, int)
            or self.rollout_memory < 0
        ):
            raise AnalysisError(f"rollout_memory must be a number of bytes, got {clip(self.rollout_memory)}")
        object.__setattr__(self, "discard_ratio", ratio)

    @property
    def needs_attention(self) -> bool:
        return self.distance or self.rollout is not None or self.cls_attention or self.token_mass

    @property
    def needs_all_tokens(self) -> bool:
        """The last block's output for every token (not only the prefix tokens) is read (a
        model without a class token reads them all anyway: see `vit.forward`)."""
        return self.grams or self.token_mass  # every query row, in the last block too

    def replace(self, **changes) -> Reductions:
        return dataclasses.replace(self, **changes)

    # ---- the pass itself: start, one step per block, finish ----

    def start(self, x, config, grid) -> dict:
        """State before the first block, from the embeddings x (B, T, D)."""
        state = {
            "_prefix": config.num_prefix_tokens,
            "_patches": grid[0] * grid[1],
            "_class": config.class_token,
        }
        if self.cls_tokens or self.cls_trajectory:
            state["cls_tokens"] = [self._query_token(state, x)]
        if self.grams:
            state["grams"] = [centred_gram(whole_batch(x))]
        if self.token_mass:
            state["token_mass"] = []
            state["_groups"] = token_counts(config)
        if self.rollout == "cls":
            t, b = x.shape[1], x.shape[0]
            known = isinstance(b, int)  # a batch of unknown size (a traced TF graph) carries the joint
            state["_store"] = known and 4 * b * config.depth * t * t <= self.rollout_memory
            state["_factors"] = []
        if self.distance:
            state["distance"] = []
            state["_dist"] = ops.convert_to_tensor(
                padded_distance(grid, config.patch_size, config.num_prefix_tokens), "float32"
            )
        return state

    @staticmethod
    def _query_token(state, x):
        """The token the "cls" analyses follow: the class token, or for a model without one
        (SigLIP) the mean of the patch tokens, which its attention-pool head reads."""
        return x[:, 0] if state["_class"] else ops.mean(x[:, state["_prefix"] :], axis=1)

    def consumer(self, state: dict):
        """(fn, row_inputs) for `ops.attention`: fn reduces a chunk of query rows of one block's
        probabilities (B, H, c, T) to what `step` folds in, each part summed or stacked over the
        chunks afterwards. row_inputs hold, per query row, its distances to every token (zero
        on prefix rows and columns), whether it is a patch and whether it is a real row (the
        chunks past the last row are zero padding)."""
        prefix = state["_prefix"]
        t = prefix + state["_patches"]
        row = np.arange(t)
        inputs = {"valid": ops.convert_to_tensor(np.ones(t, np.float32))}
        if self.distance:
            inputs["dist"] = state["_dist"]
            if self.renormalize:
                inputs["patch"] = ops.convert_to_tensor((row >= prefix).astype(np.float32))

        def reduce_rows(probs, rows):
            a = ops.cast(probs, "float32")  # reductions in float32 whatever the compute dtype
            parts = {}
            if self.distance:
                if self.renormalize:  # each patch row renormalised over the patches
                    ap, d = a[..., prefix:], rows["dist"][:, prefix:]
                    ratio = ops.sum(ap * d, axis=-1) / ops.sum(ap, axis=-1)  # (B, H, c)
                    # prefix rows may give the patches no weight at all (0 / 0): not summed
                    ratio = ops.where(rows["patch"] > 0, ratio, ops.zeros_like(ratio))
                    parts["distance"] = ops.sum(ratio, axis=-1)  # (B, H)
                else:  # sum of a * d; d is zero on prefix and padded rows
                    parts["distance"] = weighted_total(a, rows["dist"])  # (B, H)
            # Heads averaged once, for the token groups and a mean-fused rollout.
            mean_fused = self.rollout is not None and self.head_fusion == "mean"
            mean_rows = ops.mean(a, axis=1) if self.token_mass or mean_fused else None  # (B, c, T)
            if self.token_mass:  # attention received per token, summed over the real query rows
                parts["received"] = ops.sum(mean_rows * rows["valid"][None, :, None], axis=1)  # (B, T)
            if self.rollout is not None:
                parts["fused"] = mean_rows if mean_fused else _FUSE[self.head_fusion](a, axis=1)  # (B, c, T)
            if self.cls_attention:
                parts["first"] = a[:, :, 0] + 0.0  # (B, H, T): the chunk's first row, a copy
            return parts

        return reduce_rows, inputs

    def parts_of(self, state: dict, probs):
        """`step`'s parts from whole maps (B, H, T, T), as one chunk; None without maps."""
        if probs is None or not self.needs_attention:
            return None
        fn, inputs = self.consumer(state)
        return {k: v[None] for k, v in fn(probs, inputs).items()}

    def step(self, state: dict, x, parts, last: bool) -> dict:
        """Fold in one block: its output x (B, Q, D) and the parts of its attention that
        `consumer`'s function reduced, stacked over the query chunks (S, ...)."""
        prefix = state["_prefix"]
        if self.cls_tokens or self.cls_trajectory:
            state["cls_tokens"].append(self._query_token(state, x))
        if self.grams:
            state["grams"].append(centred_gram(whole_batch(x)))
        if parts is None:
            return state
        t = prefix + state["_patches"]
        if self.token_mass:  # (B, 3): received per token, averaged over heads and query rows
            received = ops.sum(parts["received"], axis=0) / t  # (B, T)
            state["token_mass"].append(group_shares(received, *state["_groups"]))
        if self.distance:
            state["distance"].append(ops.sum(parts["distance"], axis=0) / state["_patches"])  # (B, H)
        if self.rollout is not None:
            rows = parts["fused"]  # (S, B, c, T)
            s, c = rows.shape[0], rows.shape[2]
            fused = ops.reshape(ops.transpose(rows, (1, 0, 2, 3)), (-1, s * c, t))[:, :t]  # (B, T, T)
            f = _factor(fused, self.discard_ratio, keep_first=state["_class"])  # (B, T, T)
            joint = state.get("rollout")
            if self.rollout == "cls" and state["_store"]:
                state["_factors"].append(f)
            elif joint is None:
                state["rollout"] = f
            elif last and self.rollout == "cls" and state["_class"]:
                # e_0^T A_L (A_{L-1} ... A_1): the last factor's CLS row alone
                state["rollout"] = ops.matmul(f[:, :1], joint)[:, 0]  # (B, T)
            else:
                state["rollout"] = ops.matmul(f, joint)  # (B, T, T)
        if last and self.cls_attention and state["_class"]:
            state["cls_attention"] = parts["first"][0][:, :, prefix:]  # (B, H, N)
        return state

    def finish(self, state: dict, pool_probs=None) -> dict:
        """The outputs; pool_probs (B, H, N), the attention-pool head's attention over the patches,
        stands in for the class token's row in a model without one."""
        out = {}
        prefix = state["_prefix"]
        if self.distance:
            out["distance"] = ops.stack(state["distance"], axis=1)  # (B, L, H)
        if self.rollout == "cls" and state["_store"]:
            # from the last block down: e_0^T A_L, then times each earlier factor
            factors = state["_factors"]
            if state["_class"]:
                row = factors[-1][:, 0]  # (B, T)
            else:
                q = _fused_row(
                    ops.cast(pool_probs, "float32"), self.head_fusion, self.discard_ratio
                )  # (B, N)
                row = ops.matmul(ops.pad(q, ((0, 0), (prefix, 0)))[:, None], factors[-1])[:, 0]  # (B, T)
            for f in reversed(factors[:-1]):
                row = ops.matmul(row[:, None], f)[:, 0]
            out["rollout"] = row[:, prefix:]  # (B, N)
        elif self.rollout == "cls":
            row = state["rollout"]
            if len(row.shape) == 3:
                if state["_class"]:  # a single block: its factor's CLS row
                    row = row[:, 0]
                else:  # the pooling query's fused row over the patches, through every block
                    q = _fused_row(
                        ops.cast(pool_probs, "float32"), self.head_fusion, self.discard_ratio
                    )  # (B, N)
                    q = ops.pad(q, ((0, 0), (prefix, 0)))  # (B, T)
                    row = ops.matmul(q[:, None], row)[:, 0]  # (B, T)
            out["rollout"] = row[:, prefix:]  # (B, N)
        elif self.rollout == "full":
            out["rollout"] = state["rollout"]  # (B, T, T)
        if self.cls_attention:
            out["cls_attention"] = (
                state["cls_attention"] if state["_class"] else ops.cast(pool_probs, "float32") + 0.0
            )  # (B, H, N)
        if self.cls_tokens or self.cls_trajectory:
            tokens = ops.stack([ops.cast(t, "float32") for t in state["cls_tokens"]], axis=1)  # (B, L+1, D)
            if self.cls_tokens:
                out["cls_tokens"] = tokens
            if self.cls_trajectory:
                out["cls_trajectory"] = cosine_to_final(tokens)
        if self.grams:
            out["grams"] = ops.stack(state["grams"])  # (L+1, B, B)
        if self.token_mass:
            out["token_mass"] = ops.stack(state["token_mass"], axis=1)  # (B, L, 3)
        return out
