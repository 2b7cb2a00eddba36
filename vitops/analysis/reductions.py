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

from ..backend.compile import recomputes
from ..backend.distribute import whole_batch
from ..backend.reduce import weighted_total
from ..errors import AnalysisError, clip
from .cka import centred_gram
from .embeddings import cosine_to_final
from .rollout import _FUSE, _factor, _fused_row, rollout_options
from .tokens import group_shares, token_counts

ROLLOUTS = ("cls", "full")
# The memory the in-forward analyses may take beyond the plain forward pass, by default: the
# chunks of attention rows they read at a time (`vitops.backend.fused.row_step_bytes`) and the
# rollout's kept factors. The CLS row of the rollout, e_0^T A_L ... A_1, is a product from the
# last block down. When every block's head-fused factor (B, T, T) fits this budget, the
# factors are kept until the last block and the row costs L vector-matrix products. Above it
# (large grids or batches: ViT-S/16 at 1024 px, batch 2, 1.6 GB of factors) each block's input
# (B, T, D) is kept instead, T / D times smaller, and after the last block the row is carried
# down, each block's attention computed again from its input a chunk of rows at a time: one
# more pass over the attention, O(L T^2 D), never a (B, T, T) matrix (carrying the joint
# product forward would be O(L T^3): 200 s a batch there on a 2-core CPU, against 10 s for
# the forward pass).
ANALYSIS_MEMORY_BYTES = 256 << 20


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
    token_norms    (B, L+1, T) the L2 norm of every token after the embedding and after every
                               block (the high-norm tokens of Darcet et al. 2024, "Vision
                               Transformers Need Registers")
    pca_*          the patch tokens of step pca_step (0 = embeddings, i = after block i,
                               negative from the last block run) after the final norm, as
                               DINOv2's PCA figures read them: pca_tokens (B, N, D),
                               pca_mean (D,) their mean over the batch and its patches, and
                               pca_scatter (D, D) the sum of outer products of their
                               deviations from it (merged over batches by `analysis.pca`)
    logit_lens     (B, L+1, K) what the final norm, pooling and head make of the tokens after
                               the embedding and after every block, as if it were the last
                               (`vitops.core.vit.readout`): logits, or for a headless model its
                               features (B, L+1, D)

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
    token_norms: bool = False
    logit_lens: bool = False
    pca: bool = False
    pca_step: int = -1
    memory: int = ANALYSIS_MEMORY_BYTES  # bytes of maps and factors held at a time (see above)

    def __post_init__(self):
        flags = [f.name for f in dataclasses.fields(self) if f.type in (bool, "bool")]
        bad = [f"{k}={clip(getattr(self, k))}" for k in flags if not isinstance(getattr(self, k), bool)]
        if bad:
            raise AnalysisError(f"Reductions flags must be True or False: {', '.join(bad)}")
        if self.rollout is not None and self.rollout not in ROLLOUTS:
            raise AnalysisError(f"rollout must be None or one of {ROLLOUTS}, got {clip(self.rollout)}")
        _, ratio = rollout_options(self.head_fusion, self.discard_ratio)
        if isinstance(self.pca_step, bool) or not isinstance(self.pca_step, int):
            raise AnalysisError(f"pca_step must be an integer, got {clip(self.pca_step)}")
        if isinstance(self.memory, bool) or not isinstance(self.memory, int) or self.memory < 0:
            raise AnalysisError(f"memory must be a number of bytes, got {clip(self.memory)}")
        object.__setattr__(self, "discard_ratio", ratio)

    @property
    def needs_attention(self) -> bool:
        return self.distance or self.rollout is not None or self.cls_attention or self.token_mass

    @property
    def needs_all_tokens(self) -> bool:
        """The last block's output for every token (not only the prefix tokens) is read (a
        model without a class token reads them all anyway: see `vit.forward`)."""
        # every query row, in the last block too
        return self.grams or self.token_mass or self.token_norms or self.pca

    def replace(self, **changes) -> Reductions:
        return dataclasses.replace(self, **changes)

    # ---- the pass itself: start, one step per block, finish ----

    @staticmethod
    def geometry(config, grid) -> dict:
        """The token layout the reductions read: prefix tokens, patches, grid, patch size."""
        return {
            "_prefix": config.num_prefix_tokens,
            "_patches": grid[0] * grid[1],
            "_class": config.class_token,
            "_grid": grid,
            "_patch_size": config.patch_size,
        }

    def start(
        self, x, config, grid, whole: bool = False, readout=None, final_norm=None, carry: bool = False
    ) -> dict:
        """State before the first block, from the embeddings x (B, T, D). whole: the pass reads
        whole maps (returned, perturbed or float64), so the rollout keeps its factors.
        readout(x): the head applied to a block's tokens (`vitops.core.vit.readout`), for the
        logit lens; final_norm(x): the model's final norm, for the PCA statistics. carry: the
        rollout's second pass runs after this pass, a segment at a time (`rollout_carry`)."""
        state = self.geometry(config, grid)
        if self.cls_tokens or self.cls_trajectory:
            state["cls_tokens"] = [self._query_token(state, x)]
        if self.grams:
            state["grams"] = [centred_gram(whole_batch(x))]
        if self.token_norms:
            state["token_norms"] = [_norms(x)]
        state["_step"] = 0
        if self.pca:
            depth = config.depth
            step = self.pca_step if self.pca_step >= 0 else None
            if step is not None and step > depth or self.pca_step < -1:
                raise AnalysisError(
                    f"pca_step must be -1 (the last block run) or 0 to {depth} (after block i), "
                    f"got {self.pca_step}"
                )
            if final_norm is None:
                raise AnalysisError(
                    "the PCA statistics need the model's final norm (start(..., final_norm=))"
                )
            state["_final_norm"] = final_norm
            if step == 0:
                state.update(_pca_stats(final_norm(x), state["_prefix"]))
        if self.logit_lens:
            if readout is None:
                raise AnalysisError("the logit lens needs the model's head (start(..., readout=))")
            state["_readout"] = readout
            state["logit_lens"] = [ops.cast(readout(x), "float32")]
        if self.token_mass:
            state["token_mass"] = []
            state["_groups"] = token_counts(config)
        if self.rollout == "cls":
            t, b = x.shape[1], x.shape[0]
            b = b if isinstance(b, int) else 8  # a batch of unknown size (a traced graph) sized as 8
            state["_store"] = whole or 4 * b * config.depth * t * t <= self.memory
            state["_factors"] = []
            # For the second pass, every s-th block's input is kept, s such that they fit half
            # the budget (ViT-L/14 at 1036 px, batch 2: every input would be 1.1 GB); the
            # blocks between are run again from the kept one, a segment at a time. Only where
            # that frees memory: eager PyTorch, or a second pass run after this one (carry;
            # within one XLA graph the blocks run again are merged with the first pass's, see
            # `recomputes`, so there every input is kept).
            kept = 4 * b * t * x.shape[2] * config.depth
            stride = max(1, -(-2 * kept // max(self.memory, 1)))
            state["_stride"] = stride if carry or recomputes() else 1
            state["_inputs"] = {} if state["_store"] else {0: x}  # block -> its input
            first = ops.cast(x[:, :, 0], "float32")  # (B, T): any (B, T) array
            state["_e0"] = ops.concatenate(
                [ops.ones_like(first[:, :1]), ops.zeros_like(first[:, 1:])], axis=1
            )
            state["_done"] = 0  # blocks folded in
        if self.distance:
            state["distance"] = []
        return state

    @staticmethod
    def _query_token(state, x):
        """The token the "cls" analyses follow: the class token, or for a model without one
        (SigLIP) the mean of the patch tokens, which its attention-pool head reads. A copy, not
        a view: a kept view would keep its block's whole (B, T, D) output alive in eager
        PyTorch until the pass ends (ViT-S/16 at 1024 px, batch 2: 13 x 12.6 MB)."""
        return ops.copy(x[:, 0]) if state["_class"] else ops.mean(x[:, state["_prefix"] :], axis=1)

    def consumer(self, state: dict):
        """(fn, row_inputs) for `ops.attention`: fn reduces a chunk of query rows of one block's
        probabilities (B, H, c, T) to what `step` folds in, each part summed or stacked over the
        chunks afterwards. row_inputs hold, per query row, its patch centre in pixels (zero on
        prefix rows), whether it is a patch and whether it is a real row (the chunks past the
        last row are zero padding)."""
        prefix = state["_prefix"]
        inputs = _row_inputs(state)
        keys = inputs["pos"]  # (T, 3): every token's centre and patch flag, whole (the keys)
        fused_rows = self.rollout == "full" or (self.rollout == "cls" and state["_store"])
        starts = _starts_in_first_pass(self, state)

        def reduce_rows(probs, rows):
            a = ops.cast(probs, "float32")  # reductions in float32 whatever the compute dtype
            parts = {}
            if self.distance:
                d = _distances(rows, keys)  # (c, T), zero on prefix rows and columns
                if self.renormalize:  # each patch row renormalised over the patches
                    ap, d = a[..., prefix:], d[:, prefix:]
                    ratio = ops.sum(ap * d, axis=-1) / ops.sum(ap, axis=-1)  # (B, H, c)
                    # prefix rows may give the patches no weight at all (0 / 0): not summed
                    ratio = ops.where(rows["patch"] > 0, ratio, ops.zeros_like(ratio))
                    parts["distance"] = ops.sum(ratio, axis=-1)  # (B, H)
                else:  # sum of a * d; d is zero on prefix and padded rows
                    parts["distance"] = weighted_total(a, d)  # (B, H)
            if self.token_mass:  # attention received per token, summed over the real query rows
                parts["received"] = _row_sum(a, rows["valid"])  # (B, T)
            if fused_rows:
                parts["fused"] = _FUSE[self.head_fusion](a, axis=1)  # (B, c, T)
            if self.cls_attention:
                parts["first"] = a[:, :, 0] + 0.0  # (B, H, T): the chunk's first row, a copy
            if starts:  # the last block's fused CLS row: where the rollout's row starts
                parts["start"] = _FUSE[self.head_fusion](a[:, :, 0], axis=1)  # (B, T)
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
        if self.token_norms:
            state["token_norms"].append(_norms(x))
        state["_step"] += 1
        if self.pca and (state["_step"] == self.pca_step or (self.pca_step == -1 and last)):
            state.update(_pca_stats(state["_final_norm"](x), state["_prefix"]))
        if self.logit_lens:
            state["logit_lens"].append(ops.cast(state["_readout"](x), "float32"))
        if self.rollout == "cls":
            state["_done"] += 1
            if not state["_store"] and not last and state["_done"] % state["_stride"] == 0:
                state["_inputs"][state["_done"]] = x  # the next block's input
        if parts is None:
            return state
        t = prefix + state["_patches"]
        if self.token_mass:  # (B, 3): received per token, averaged over heads and query rows
            received = ops.sum(parts["received"], axis=0) / t  # (B, T)
            state["token_mass"].append(group_shares(received, *state["_groups"]))
        if self.distance:
            state["distance"].append(ops.sum(parts["distance"], axis=0) / state["_patches"])  # (B, H)
        if "fused" in parts:
            rows = parts["fused"]  # (S, B, c, T)
            s, c = rows.shape[0], rows.shape[2]
            fused = ops.reshape(ops.transpose(rows, (1, 0, 2, 3)), (-1, s * c, t))[:, :t]  # (B, T, T)
            f = _factor(fused, self.discard_ratio, keep_first=state["_class"])  # (B, T, T)
            if self.rollout == "cls":
                state["_factors"].append(f)
            else:
                joint = state.get("rollout")
                state["rollout"] = f if joint is None else ops.matmul(f, joint)  # (B, T, T)
        if last and self.cls_attention and state["_class"]:
            state["cls_attention"] = ops.copy(parts["first"][0][:, :, prefix:])  # (B, H, N), not a view
        if last and "start" in parts:
            # e_0^T of the last block's factor (fused + I) / (sum(fused) + 1), from its CLS row
            # (chunk 0 holds it): the second pass begins one block lower, one block's
            # attention fewer computed again, and that block's input is not read again
            row = parts["start"][0]  # (B, T)
            state["_row"] = (row + state["_e0"]) / (ops.sum(row, axis=-1, keepdims=True) + 1.0)
            state["_inputs"].pop(state["_done"] - 1, None)
        return state

    def rollout_carry(self, state: dict, pool_probs=None) -> dict | None:
        """What the rollout's second pass starts from, after the last block, when it runs
        blocks again (only every s-th input kept, see `start`): "row" (B, T), the CLS row so
        far, and "inputs", the kept block inputs (B, T, D) by block index (as strings). Run
        after the forward pass, one compiled call per segment (`VisionTransformer.infer`),
        the blocks run again are not merged with the first pass's, as within one XLA program.
        None when there is no second pass (no CLS rollout, or its factors were kept) or every
        input was kept: then `rollout_down` within the pass is faster (DINOv2 ViT-S/14 at 518
        px, batch 8, jax, 2-core Xeon: 5.6 s a batch against 6.3 s in segments)."""
        if self.rollout != "cls" or state["_store"] or state["_stride"] == 1:
            return None
        row = self._start_row(state, pool_probs)
        return {"row": row, "inputs": {str(k): state["_inputs"].pop(k) for k in sorted(state["_inputs"])}}

    def second_pass(self, state: dict, depth: int) -> list[tuple[int, int]]:
        """The segments (first, end) of blocks the second pass carries the row down through,
        the last first: each from a kept input (blocks first .. end - 1). depth: blocks run."""
        kept = sorted(int(k) for k in state["_inputs"])
        top = depth - _starts_in_first_pass(self, state)  # blocks 0 .. top - 1 still to fold in
        return [(k, kept[j + 1] if j + 1 < len(kept) else top) for j, k in enumerate(kept)][::-1]

    def segment_down(self, state: dict, row, block_parts, run_block, first: int, end: int, x):
        """row (B, T) carried down through blocks end - 1 .. first: block first's input x, the
        inputs of the blocks after it run again with run_block(i, x), then each block's factor
        from its attention, recomputed by block_parts(i, x, consume) (see `rollout_down`)."""
        xs = [x]
        for i in range(first, end - 1):
            xs.append(run_block(i, xs[-1]))
        for i in reversed(range(first, end)):
            row = self._down_step(state, row, block_parts, i, xs.pop())
        return row

    def rollout_down(self, state: dict, block_parts, pool_probs=None, run_block=None) -> dict:
        """The rollout's CLS row from the last block down, from the kept block inputs, in this
        pass: block_parts(i, x, consume) reduces block i's attention of input x (B, T, D) with
        consume (fn, row_inputs) and returns the parts stacked over chunks (see
        `vitops.core.ops.attention`); run_block(i, x) is block i's output, for the inputs
        between two kept ones. Nothing to do when the factors were kept."""
        if self.rollout != "cls" or state["_store"]:
            return state
        row = self._start_row(state, pool_probs)
        for first, end in self.second_pass(state, state["_done"]):
            x = state["_inputs"].pop(first)
            row = self.segment_down(state, row, block_parts, run_block, first, end, x)
        state["rollout"] = row[:, state["_prefix"] :]
        return state

    def _down_step(self, state: dict, row, block_parts, i: int, x):
        """row (B, T) times block i's rollout factor, its attention recomputed from its input x."""
        t = state["_prefix"] + state["_patches"]
        inputs = _row_inputs(state)
        if self.discard_ratio > 0:  # the discarded share is of a whole fused map: one block's
            fn = lambda probs, rows: {"fused": _FUSE[self.head_fusion](ops.cast(probs, "float32"), axis=1)}
            parts = block_parts(i, x, (fn, inputs))["fused"]  # (S, B, c, T)
            s, c = parts.shape[0], parts.shape[2]
            fused = ops.reshape(ops.transpose(parts, (1, 0, 2, 3)), (-1, s * c, t))[:, :t]
            f = _factor(fused, self.discard_ratio, keep_first=state["_class"])  # (B, T, T)
            return ops.matmul(row[:, None], f)[:, 0]
        weights = dict(inputs, row=ops.transpose(row))  # (T, B): this row's weight per query

        def down(probs, rows):
            # row (B, T) times the factor (fused + I) / (sum(fused) + 1), this chunk's rows
            fused = _FUSE[self.head_fusion](ops.cast(probs, "float32"), axis=1)  # (B, c, T)
            w = ops.transpose(rows["row"]) / (ops.sum(fused, axis=-1) + 1.0)  # (B, c), 0 on padding
            return {"mixed": ops.matmul(w[:, None], fused)[:, 0], "self": w}  # (B, T), (B, c)

        parts = block_parts(i, x, (down, weights))
        s, c = parts["self"].shape[0], parts["self"].shape[2]
        own = ops.reshape(ops.transpose(parts["self"], (1, 0, 2)), (-1, s * c))[:, :t]  # (B, T)
        return ops.sum(parts["mixed"], axis=0) + own  # (B, T)

    def _start_row(self, state: dict, pool_probs):
        """The vector the second pass starts from, (B, T): the row after the last block when
        the first pass read it, else e_0 for the class token, else the attention-pool query's
        fused row over the patches (its stand-in)."""
        if "_row" in state:
            return state["_row"]
        prefix = state["_prefix"]
        if state["_class"]:
            return state["_e0"]
        q = _fused_row(ops.cast(pool_probs, "float32"), self.head_fusion, self.discard_ratio)  # (B, N)
        return ops.pad(q, ((0, 0), (prefix, 0)))

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
        elif self.rollout == "cls" and "rollout" in state:  # carried down (`rollout_down`)
            out["rollout"] = state["rollout"]  # (B, N); absent when carried out of the pass
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
        if self.token_norms:
            out["token_norms"] = ops.stack(state["token_norms"], axis=1)  # (B, L+1, T)
        if self.logit_lens:
            out["logit_lens"] = ops.stack(state["logit_lens"], axis=1)  # (B, L+1, K)
        if self.pca:
            for k in ("pca_tokens", "pca_mean", "pca_scatter"):
                if k not in state:  # a step after the last block run (num_blocks)
                    raise AnalysisError(f"pca_step {self.pca_step} is after the last block run")
                out[k] = state[k]
        return out


def _starts_in_first_pass(spec: Reductions, state: dict) -> bool:
    """Whether the rollout's row is carried down in a second pass and can start from the last
    block's CLS row, read in the first pass: e_0^T of the last factor needs that row alone
    when nothing is discarded (a discarded share is of the whole fused map) and the row
    starts at the class token (an attention-pool head's row meets every row of the factor)."""
    return spec.rollout == "cls" and not state["_store"] and state["_class"] and spec.discard_ratio == 0


def _pca_stats(x, prefix: int) -> dict:
    """The patch tokens of x (B, T, D) in float32 and their batch statistics: the mean (D,)
    and the scatter (D, D) of the deviations from it, which merge exactly across batches
    (Chan et al. 1979) without the cancellation of raw second moments."""
    t = ops.cast(x[:, prefix:], "float32")  # (B, N, D)
    flat = ops.reshape(t, (-1, t.shape[-1]))  # (B N, D)
    mean = ops.mean(flat, axis=0)
    dev = flat - mean[None]
    return {"pca_tokens": t, "pca_mean": mean, "pca_scatter": ops.matmul(ops.transpose(dev), dev)}


def _norms(x):
    """(B, T, D) tokens -> (B, T) their L2 norms, in float32 whatever the compute dtype."""
    x = ops.cast(x, "float32")
    return ops.sqrt(ops.sum(x * x, axis=-1))


# ---- per-row inputs of the consumer: positions instead of a (T, T) table ----


def _positions(state: dict) -> np.ndarray:
    """(T, 3) float32 per token: its patch centre (row, column) in pixels and 1 for a patch;
    zeros for the prefix tokens."""
    (rows, cols), prefix, p = state["_grid"], state["_prefix"], float(state["_patch_size"])
    i, j = np.divmod(np.arange(rows * cols), cols)
    pos = np.zeros((prefix + rows * cols, 3), np.float32)
    pos[prefix:, 0], pos[prefix:, 1], pos[prefix:, 2] = p * i, p * j, 1.0
    return pos


def _row_inputs(state: dict) -> dict:
    """Per query row (first axis T): "pos" (T, 3) from `_positions`, "patch" (T,) and "valid"
    (T,), ones (a row past the last is padding, zero)."""
    pos = _positions(state)
    return {
        "pos": ops.convert_to_tensor(pos),
        "patch": ops.convert_to_tensor(pos[:, 2]),
        "valid": ops.convert_to_tensor(np.ones(len(pos), np.float32)),
    }


def _distances(rows: dict, keys):
    """(c, T) pixel distances between the chunk's query rows and every token, zero where
    either is a prefix token or the row is padding: computed per chunk, never a (T, T) table
    (67 MB at 1024 px and patch 16)."""
    q, k = rows["pos"], keys  # (c, 3), (T, 3)
    dy = q[:, None, 0] - k[None, :, 0]
    dx = q[:, None, 1] - k[None, :, 1]
    return ops.sqrt(dy * dy + dx * dx) * (q[:, None, 2] * k[None, :, 2])


def _row_sum(a, valid):
    """(B, H, c, T) probabilities, (c,) row weights -> (B, T): summed over the weighted rows and
    averaged over the heads, as products (a reduction over a non-minor axis ran 3x slower on
    XLA:CPU at 4,097 tokens)."""
    b, h, c = ops.shape(a)[0], a.shape[1], a.shape[2]
    w = ops.broadcast_to(ops.reshape(valid, (1, 1, 1, c)), (b, h, 1, c))
    return ops.mean(ops.matmul(w, a)[:, :, 0], axis=1)  # (B, T)
