"""The forward pass: forward(params, config, images) -> outputs.

params is a plain dict of arrays in vitops naming (see `param_shapes`); the same function
serves the Keras model, `jax.jit` / `jax.grad`, and any other caller. Every family is a config
delta of this one code path (`vitops.core.config` lists them). Read top to bottom:

    embed    patches -> tokens: [class, distillation, registers, patches] + positions
    block    x + ls1 * attn(norm1(x)), then x + ls2 * mlp(norm2(x))        (pre-norm)
    forward  embed, blocks, final norm, pooling, pre-logits, head, projection

Shapes as in vitops/__init__.py.
"""

from __future__ import annotations

from keras import ops

from ..errors import AnalysisError, ImageError, clip
from .config import ViTConfig
from .ops import (
    attention,
    attention_parts,
    attention_pool,
    dense,
    is_float64,
    layer_norm,
    mean,
    mlp_hidden,
    rope_tables,
)
from .posemb import resample_pos_embed


def param_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every array the forward pass consumes, by vitops key, with its shape."""
    p, d, m = config.patch_size, config.dim, config.mlp_dim
    (rows, cols), c = config.grid_size, config
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.kernel": (p, p, 3, d)
    }  # YXCD: a patch image per output
    if c.patch_bias:
        shapes["patch_embed.bias"] = (d,)
    if c.class_token:
        shapes["cls_token"] = (d,)
    if c.distilled:
        shapes["dist_token"] = (d,)
    if c.reg_tokens:
        shapes["reg_tokens"] = (c.reg_tokens, d)
    if c.pos_embed != "none":  # the covered prefix tokens first, then the grid row-major
        shapes["pos_embed"] = (c.num_pos_prefix + rows * cols, d)
    if c.pre_norm:
        shapes.update({"norm_pre.scale": (d,), "norm_pre.bias": (d,)})
    for i in range(c.depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.scale": (d,), b + "norm1.bias": (d,), b + "attn.qkv.kernel": (d, 3 * d)})
        if c.qkv_bias:
            shapes[b + "attn.qkv.bias"] = (3 * d,)
        shapes.update(
            {
                b + "attn.proj.kernel": (d, d),
                b + "attn.proj.bias": (d,),
                b + "norm2.scale": (d,),
                b + "norm2.bias": (d,),
                b + "mlp.fc1.kernel": (d, m),
                b + "mlp.fc1.bias": (m,),
            }
        )
        if c.mlp == "swiglu":  # fc1 is the value branch, fc1_g the gate
            shapes.update({b + "mlp.fc1_g.kernel": (d, m), b + "mlp.fc1_g.bias": (m,)})
        shapes.update({b + "mlp.fc2.kernel": (m, d), b + "mlp.fc2.bias": (d,)})
        if c.layer_scale:
            shapes.update({b + "ls1.gamma": (d,), b + "ls2.gamma": (d,)})
    norm = "fc_norm" if c.fc_norm else "norm"
    shapes.update({f"{norm}.scale": (d,), f"{norm}.bias": (d,)})
    if c.pool == "map":
        a = "attn_pool."
        shapes.update(
            {
                a + "latent": (d,),
                a + "q.kernel": (d, d),
                a + "q.bias": (d,),
                a + "kv.kernel": (d, 2 * d),
                a + "kv.bias": (2 * d,),
                a + "proj.kernel": (d, d),
                a + "proj.bias": (d,),
                a + "norm.scale": (d,),
                a + "norm.bias": (d,),
                a + "mlp.fc1.kernel": (d, m),
                a + "mlp.fc1.bias": (m,),
                a + "mlp.fc2.kernel": (m, d),
                a + "mlp.fc2.bias": (d,),
            }
        )
    if c.representation_size:
        shapes["pre_logits.kernel"] = (d, c.representation_size)
        shapes["pre_logits.bias"] = (c.representation_size,)
    if c.num_classes:
        shapes["head.kernel"] = (c.representation_size or d, c.num_classes)
        shapes["head.bias"] = (c.num_classes,)
        if c.distilled:
            shapes["head_dist.kernel"] = (d, c.num_classes)
            shapes["head_dist.bias"] = (c.num_classes,)
    if c.proj_dim:
        shapes["proj.kernel"] = (d, c.proj_dim)
    return shapes


def check_images(images, config: ViTConfig) -> tuple[int, int]:
    """Validate a (B, Y, X, 3) batch and return its patch grid (I, J); ImageError otherwise."""
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ImageError(f"images must be (batch, height, width, 3) with rank 4, got shape {shape}")
    h, w, c = shape[1], shape[2], shape[3]
    if c != 3:
        hint = " (channels first? move the 3 to the end)" if h == 3 else ""
        raise ImageError(f"images must have 3 channels last (RGB, NHWC), got {c} in shape {shape}{hint}")
    if h is None or w is None:
        raise ImageError(f"image height and width must be known, got shape {shape}")
    if shape[0] == 0:
        raise ImageError(f"images is an empty batch, shape {shape}: give at least one image")
    p = config.patch_size
    if h < p or w < p:
        raise ImageError(f"image size {h}x{w} is smaller than one patch ({p}x{p})")
    if h % p or w % p:
        raise ImageError(
            f"image size {h}x{w} is not a multiple of the patch size {p}; "
            f"resize or crop to e.g. {max(p, h // p * p)}x{max(p, w // p * p)}"
        )
    return h // p, w // p


def check_num_blocks(num_blocks, config: ViTConfig, reductions=None, attention_delta=None) -> int:
    """num_blocks for `forward`'s early stop, checked: an int in [1, depth]."""
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or not 1 <= num_blocks <= config.depth:
        raise AnalysisError(f"num_blocks must be an int in [1, {config.depth}], got {clip(num_blocks)}")
    if attention_delta is not None:
        raise AnalysisError("attention_delta perturbs the whole network: it cannot be used with num_blocks")
    if (
        reductions is not None
        and not config.class_token
        and (reductions.rollout == "cls" or reductions.cls_attention)
    ):
        raise AnalysisError(
            "without a class token the rollout row and cls_attention read the attention-pool "
            "head, which a pass stopped by num_blocks never reaches"
        )
    return num_blocks


def rope(config: ViTConfig, grid):
    """The rotary tables (sin, cos) of the patch grid, or None for a model without them."""
    return rope_tables(tuple(grid), config.head_dim, config.rope_base) if config.rope_base else None


def embed(params, config: ViTConfig, images):
    """Patchify, project, add the position embeddings, prepend the prefix tokens: -> (B, T, D),
    in the order [class, distillation, registers, patches] (timm's and Hugging Face's)."""
    gh, gw = check_images(images, config)
    p, d = config.patch_size, config.dim
    # A stride-p convolution, as the references compute it: the same kernel as PyTorch's on the
    # torch backend and the same sums on jax (a matmul over flattened patches is equal in exact
    # arithmetic but rounds differently, up to 1e-6 relative, which the blocks then carry).
    kernel = ops.cast(params["patch_embed.kernel"], images.dtype)
    x = ops.reshape(ops.conv(images, kernel, strides=p, padding="valid"), (-1, gh * gw, d))  # (B, N, D)
    if "patch_embed.bias" in params:
        x = x + ops.cast(params["patch_embed.bias"], x.dtype)
    batch = ops.shape(x)[0]
    prefix = [params[k] for k in ("cls_token", "dist_token") if k in params]  # (D,) each
    if config.pos_embed != "none":
        covered = config.num_pos_prefix
        pos = ops.cast(
            resample_pos_embed(params["pos_embed"], config.grid_size, (gh, gw), covered, config.pos_interp),
            x.dtype,
        )
        x = x + pos[covered:]
        # ops.add, not +: the params may be plain numpy arrays (numpy + torch tensor fails)
        prefix = [ops.add(pos[j], ops.cast(t, x.dtype)) for j, t in enumerate(prefix)] if covered else prefix
    tokens = [ops.stack(prefix)] if prefix else []  # (P0, D)
    if config.reg_tokens:  # registers have no position (Darcet et al. 2024)
        tokens.append(params["reg_tokens"])
    if tokens:
        head = ops.cast(ops.concatenate(tokens, axis=0), x.dtype)
        x = ops.concatenate([ops.broadcast_to(head[None], (batch, head.shape[0], d)), x], axis=1)  # (B, T, D)
    if config.pre_norm:  # CLIP's ln_pre
        x = layer_norm(x, params["norm_pre.scale"], params["norm_pre.bias"], config.layer_norm_eps)
    return x


def block(
    params,
    config: ViTConfig,
    i: int,
    x,
    return_attention: bool = False,
    num_queries: int | None = None,
    attention_delta=None,
    consume=None,
    return_mlp_hidden: bool = False,
    rope=None,
):
    """One pre-norm transformer block: (B, T, D) -> (B, Q, D), probs (B, H, T, T) or None.

    Q = T, or num_queries: then only the first Q tokens' outputs are computed. attention_delta,
    consume, rope: see `ops.attention` (with consume, the second result is its parts).
    return_mlp_hidden=True appends a third result, the MLP's hidden layer after its
    activation, (B, Q, M): the units that feature visualisation maximises.
    """
    b, eps = f"blocks.{i}.", config.layer_norm_eps
    h = layer_norm(x, params[b + "norm1.scale"], params[b + "norm1.bias"], eps)
    h, probs = attention(
        h,
        params[b + "attn.qkv.kernel"],
        params.get(b + "attn.qkv.bias"),
        params[b + "attn.proj.kernel"],
        params[b + "attn.proj.bias"],
        config.num_heads,
        return_probs=return_attention,
        num_queries=num_queries,
        attention_delta=attention_delta,
        consume=consume,
        rope=rope,
        num_prefix=config.num_prefix_tokens,
    )
    if num_queries is not None:
        x = x[:, :num_queries]
    x = x + (h * params[b + "ls1.gamma"] if config.layer_scale else h)  # LayerScale (Touvron et al. 2021)
    h = layer_norm(x, params[b + "norm2.scale"], params[b + "norm2.bias"], eps)
    hidden = mlp_hidden(
        h,
        params[b + "mlp.fc1.kernel"],
        params[b + "mlp.fc1.bias"],
        config.act,
        params.get(b + "mlp.fc1_g.kernel"),
        params.get(b + "mlp.fc1_g.bias"),
    )  # (B, Q, M)
    h = dense(hidden, params[b + "mlp.fc2.kernel"], params[b + "mlp.fc2.bias"])
    x = x + (h * params[b + "ls2.gamma"] if config.layer_scale else h)
    if return_mlp_hidden:
        return x, probs, hidden
    return x, probs


def reduced_attention(params, config: ViTConfig, i: int, x, consume, rope=None):
    """Block i's attention probabilities from its input x (B, T, D), only reduced, a chunk of
    query rows at a time (consume as in `ops.attention`): the parts, stacked over the chunks.
    The same operations as the block's own attention, without the values' product."""
    b = f"blocks.{i}."
    h = layer_norm(x, params[b + "norm1.scale"], params[b + "norm1.bias"], config.layer_norm_eps)
    return attention_parts(
        h,
        params[b + "attn.qkv.kernel"],
        params.get(b + "attn.qkv.bias"),
        config.num_heads,
        consume,
        rope=rope,
        num_prefix=config.num_prefix_tokens,
    )


def _pool(params, config: ViTConfig, x, return_attention: bool, pool_delta):
    """The features of the last tokens x (B, T, D), and the pooling head's attention (B, H, N)
    for pool "map" (else None)."""
    c, probs = config, None
    if c.pool == "token":
        features = (x[:, 0] + x[:, 1]) / 2 if c.distilled else x[:, 0]  # DeiT: the mean of both tokens
    elif c.pool == "avg":
        features = mean(x[:, c.num_prefix_tokens :], 1)  # the patches only (timm's global_pool="avg")
    else:
        pool = {k[len("attn_pool.") :]: v for k, v in params.items() if k.startswith("attn_pool.")}
        features, probs = attention_pool(
            x[:, c.num_prefix_tokens :],
            pool,
            c.num_heads,
            c.act,
            c.layer_norm_eps,
            return_probs=return_attention,
            attention_delta=pool_delta,
        )
    if c.fc_norm:
        features = layer_norm(features, params["fc_norm.scale"], params["fc_norm.bias"], c.layer_norm_eps)
    return features, probs


def _head(params, config: ViTConfig, x, return_attention: bool = False, pool_delta=None):
    """Everything after the blocks, from the last tokens x (B, T, D): the final norm, the
    pooling, pre-logits, the head(s) and the projection. Returns ({"features", and as the
    config has them "logits", "logits_cls", "logits_dist", "embedding"}, the pooling head's
    attention (B, H, N) or None)."""
    c = config
    x = final_norm(params, c, x)
    features, pool_probs = _pool(params, c, x, return_attention, pool_delta)
    out = {}
    if c.representation_size:  # Google i21k: pre_logits = tanh(dense(cls))
        features = ops.tanh(dense(features, params["pre_logits.kernel"], params["pre_logits.bias"]))
    out["features"] = features
    if c.num_classes:
        if c.distilled:
            # Both heads are kept apart for distillation training (DeiT, Sec. 4); inference
            # averages them.
            out["logits_cls"] = dense(x[:, 0], params["head.kernel"], params["head.bias"])
            out["logits_dist"] = dense(x[:, 1], params["head_dist.kernel"], params["head_dist.bias"])
            out["logits"] = (out["logits_cls"] + out["logits_dist"]) / 2
        else:
            out["logits"] = dense(features, params["head.kernel"], params["head.bias"])
    if c.proj_dim:
        out["embedding"] = dense(features, params["proj.kernel"])
    return out, pool_probs


def final_norm(params, config: ViTConfig, x):
    """The model's final norm over tokens x (B, T, D) (identity where the norm comes after the
    pooling, fc_norm): the features DINOv2's patch-feature figures read."""
    c = config
    return x if c.fc_norm else layer_norm(x, params["norm.scale"], params["norm.bias"], c.layer_norm_eps)


def readout(params, config: ViTConfig, x):
    """What the head makes of the tokens x (B, T, D) of any block, as if it were the last: the
    final norm, pooling and head of `_head`, the "logit lens" (nostalgebraist 2020) of a ViT.
    Returns the logits (B, K), or for a headless model its features (B, D)."""
    c = config
    if c.pool == "token":  # the norm is per token and the head reads the prefix tokens only
        x = x[:, : c.num_prefix_tokens]
    out, _ = _head(params, c, x)
    return out["logits"] if c.num_classes else out["features"]


def forward(
    params,
    config: ViTConfig,
    images,
    *,
    return_attention: bool = False,
    return_hidden: bool = False,
    reductions=None,
    attention_delta=None,
    num_blocks: int | None = None,
    rollout_carry: bool = False,
) -> dict:
    """Run the model on preprocessed images (B, Y, X, 3); Y, X multiples of the patch.

    Returns a dict:
      "features": (B, D) the pooled output after the final norm: the class token (DeiT
        distilled: the mean of class and distillation tokens), the mean of the patch tokens, or
        the attention-pool head's output, as config.pool says (models with a pre-logits
        layer: its tanh output, (B, representation_size));
      "logits": (B, C), only when the model has a head;
      "logits_cls", "logits_dist": (B, C) each, DeiT distilled with a head: the two heads
        whose mean is "logits";
      "embedding": (B, proj_dim), the features through the output projection (CLIP's image
        embedding, not L2-normalised), when the model has one;
      "attention": list of (B, H, T, T) softmax probabilities, one per block, on request;
      "pool_attention": (B, H, N), the attention-pool head's query over the patches (pool
        "map"), with the attention on request;
      "hidden": list of L + 1 arrays (B, T, D): the input of the first block (after CLIP's
        pre-norm) and each block's output, before the final norm, on request;
      "reductions": dict of small arrays, when `reductions` (a `vitops.analysis.Reductions`)
        names analyses to compute block by block; the maps they read are reduced a chunk of
        query rows at a time, so only one chunk's maps exist at a time (with
        return_attention, every block's maps are returned and reduced whole).
    attention_delta: list of one array per block, broadcastable to (B, H, T, T), and for pool
      "map" one more, broadcastable to (B, H, N), added to the attention probabilities (zeros
      change nothing; the gradient with respect to them is the gradient with respect to the
      probabilities, see `ops.attention`).
    num_blocks: stop early (timm's `forward_intermediates(stop_early=True,
      intermediates_only=True)`): run only blocks 0 .. num_blocks - 1 and return only the
      intermediates asked for ("hidden": num_blocks + 1 arrays, "attention": num_blocks maps,
      "reductions" over those blocks, their last one standing for the last block); no final
      norm, pooling or head, which never run.
    rollout_carry: the CLS rollout's second pass, when it runs blocks again (only every s-th
      block's input kept within `reductions.memory`, `Reductions.start`), is left to the
      caller: out["rollout_carry"] holds what `rollout_segment` continues from
      (`Reductions.rollout_carry`) and out["reductions"] has no "rollout"
      (`VisionTransformer.infer` runs it). Within one XLA program those blocks would be
      merged with the first pass's, so without it jax and tensorflow keep every input.
    """
    c = config
    if num_blocks is not None:
        check_num_blocks(num_blocks, c, reductions, attention_delta)
        if not (return_attention or return_hidden or reductions is not None):
            raise AnalysisError(
                "num_blocks stops after that block and returns only intermediates: ask for "
                "return_hidden, return_attention or reductions"
            )
    depth = c.depth if num_blocks is None else num_blocks
    wanted = c.depth + (c.pool == "map")
    if attention_delta is not None and len(attention_delta) != wanted:
        raise AnalysisError(
            f"attention_delta needs one array per block ({c.depth})"
            + (" and one for the attention-pool head" if c.pool == "map" else "")
            + f", got {len(attention_delta)}"
        )
    grid = check_images(images, c)
    x = embed(params, c, images)
    tables = rope(c, grid)
    attentions: list = []
    hidden: list = [x] if return_hidden else []
    need_probs = return_attention or (reductions is not None and reductions.needs_attention)
    # The class token alone leaves the last block unless the pooling, the hidden states or a
    # reduction read the other tokens.
    all_tokens = (
        return_hidden
        or c.pool != "token"
        or num_blocks is not None
        or (reductions is not None and reductions.needs_all_tokens)
    )
    # Maps that only the reductions read are reduced a chunk of query rows at a time, inside
    # the attention (see `ops.attention`); returned maps, the gradient path and float64 (the
    # explicit path throughout) give whole maps.
    whole = return_attention or attention_delta is not None or is_float64(x.dtype)
    state = (
        reductions.start(
            x,
            c,
            grid,
            whole,
            readout=lambda t: readout(params, c, t),
            final_norm=lambda t: final_norm(params, c, t),
            carry=rollout_carry,
        )
        if reductions is not None
        else None
    )
    consume = None
    scratch: dict = {}  # the pass's logits buffer (eager PyTorch)
    if state is not None and reductions.needs_attention and not whole:
        consume = (*reductions.consumer(state), scratch, reductions.memory)

    def block_parts(i, x, rows):  # block i's attention from its input, only reduced (a second pass)
        return reduced_attention(params, c, i, x, (*rows, scratch, reductions.memory), tables)

    def run_block(i, x):  # block i's output again, from its kept input (the same operations)
        return block(params, c, i, x, rope=tables)[0]

    for i in range(depth):
        last = i == depth - 1
        # Only the prefix tokens leave the last block for the head and the features, so unless
        # the other tokens are read, their outputs are never computed (the result is the same;
        # about 1/16 of ViT-B's work is skipped).
        last_only = c.num_prefix_tokens if last and not all_tokens else None
        delta = None if attention_delta is None else attention_delta[i]
        x, probs = block(
            params,
            c,
            i,
            x,
            need_probs and consume is None,
            num_queries=last_only,
            attention_delta=delta,
            consume=consume,
            rope=tables,
        )
        if return_attention:
            attentions.append(probs)
        if return_hidden:
            hidden.append(x)
        if state is not None:
            parts = probs if consume is not None else reductions.parts_of(state, probs)
            state = reductions.step(state, x, parts, last)
    if num_blocks is not None:  # stopped early: the intermediates alone
        out: dict = {}
        if return_attention:
            out["attention"] = attentions
        if return_hidden:
            out["hidden"] = hidden
        if state is not None:
            out.update(_finish_reductions(reductions, state, block_parts, run_block, rollout_carry))
        return out
    pool_delta = attention_delta[c.depth] if attention_delta is not None and c.pool == "map" else None
    out, pool_probs = _head(params, c, x, need_probs, pool_delta)
    if return_attention:
        out["attention"] = attentions
        if pool_probs is not None:
            out["pool_attention"] = pool_probs
    if return_hidden:
        out["hidden"] = hidden
    if state is not None:
        out.update(_finish_reductions(reductions, state, block_parts, run_block, rollout_carry, pool_probs))
    return out


def _finish_reductions(reductions, state, block_parts, run_block, carry: bool, pool_probs=None) -> dict:
    """out["reductions"], with the rollout's second pass run here or, with carry, left to the
    caller as out["rollout_carry"] (see `forward`)."""
    out = {}
    rest = reductions.rollout_carry(state, pool_probs) if carry else None
    if rest is not None:
        out["rollout_carry"] = rest
    else:
        state = reductions.rollout_down(state, block_parts, pool_probs, run_block)
    out["reductions"] = reductions.finish(state, pool_probs)
    return out


def rollout_segment(params, config: ViTConfig, x, row, reductions, grid, first: int, end: int):
    """One segment of the rollout's second pass, continued after `forward(...,
    rollout_carry=True)`: row (B, T) carried down through blocks end - 1 .. first, from block
    first's kept input x (B, T, D); the blocks between run again. Returns the row (B, T)."""
    tables = rope(config, grid)
    scratch: dict = {}

    def block_parts(i, x, rows):
        return reduced_attention(params, config, i, x, (*rows, scratch, reductions.memory), tables)

    def run_block(i, x):
        return block(params, config, i, x, rope=tables)[0]

    state = reductions.geometry(config, grid)
    return reductions.segment_down(state, row, block_parts, run_block, first, end, x)
