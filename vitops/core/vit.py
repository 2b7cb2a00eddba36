"""The forward pass: forward(params, config, images) -> outputs.

params is a plain dict of arrays in vitops naming (see `param_shapes`); the same function
serves the Keras model, `jax.jit` / `jax.grad`, and any other caller. DeiT (distillation
token, two heads averaged) and DINO (no head) are config deltas of one code path.
"""

from __future__ import annotations

from keras import ops

from ..errors import AnalysisError, ImageError
from .config import ViTConfig
from .ops import attention, dense, layer_norm, mlp, mlp_hidden
from .posemb import resample_pos_embed


def param_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Every array the forward pass consumes, by vitops key, with its shape."""
    p, d, m = config.patch_size, config.dim, config.mlp_dim
    shapes = {
        "patch_embed.kernel": (p, p, 3, d),  # HWIO: a patch image per output channel
        "patch_embed.bias": (d,),
        "cls_token": (d,),
        "pos_embed": (config.num_tokens, d),  # prefix tokens first, then the grid row-major
    }
    if config.distilled:
        shapes["dist_token"] = (d,)
    for i in range(config.depth):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.scale": (d,),
                b + "norm1.bias": (d,),
                b + "attn.qkv.kernel": (d, 3 * d),
                b + "attn.qkv.bias": (3 * d,),
                b + "attn.proj.kernel": (d, d),
                b + "attn.proj.bias": (d,),
                b + "norm2.scale": (d,),
                b + "norm2.bias": (d,),
                b + "mlp.fc1.kernel": (d, m),
                b + "mlp.fc1.bias": (m,),
                b + "mlp.fc2.kernel": (m, d),
                b + "mlp.fc2.bias": (d,),
            }
        )
    shapes["norm.scale"] = (d,)
    shapes["norm.bias"] = (d,)
    if config.representation_size:
        shapes["pre_logits.kernel"] = (d, config.representation_size)
        shapes["pre_logits.bias"] = (config.representation_size,)
    if config.num_classes:
        shapes["head.kernel"] = (config.representation_size or d, config.num_classes)
        shapes["head.bias"] = (config.num_classes,)
        if config.distilled:
            shapes["head_dist.kernel"] = (d, config.num_classes)
            shapes["head_dist.bias"] = (config.num_classes,)
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


def embed(params, config: ViTConfig, images):
    """Patchify, project, prepend prefix tokens, add position embeddings: -> (B, T, D)."""
    gh, gw = check_images(images, config)
    p, d = config.patch_size, config.dim
    # A stride-p convolution with a p x p kernel is a matmul over flattened patches.
    x = ops.reshape(images, (-1, gh, p, gw, p, 3))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (B, gh, gw, p, p, 3)
    x = ops.reshape(x, (-1, gh * gw, p * p * 3))
    x = dense(x, ops.reshape(params["patch_embed.kernel"], (p * p * 3, d)), params["patch_embed.bias"])
    batch = ops.shape(x)[0]
    prefix = [params["cls_token"]] + ([params["dist_token"]] if config.distilled else [])
    prefix = ops.broadcast_to(ops.stack(prefix)[None], (batch, len(prefix), d))  # (B, P, D)
    x = ops.concatenate([ops.cast(prefix, x.dtype), x], axis=1)  # (B, T, D)
    pos = resample_pos_embed(
        params["pos_embed"], config.grid_size, (gh, gw), config.num_prefix_tokens, config.pos_interp
    )
    return x + ops.cast(pos, x.dtype)


def block(
    params,
    config: ViTConfig,
    i: int,
    x,
    return_attention: bool = False,
    num_queries: int | None = None,
    attention_delta=None,
    scratch: dict | None = None,
    return_mlp_hidden: bool = False,
):
    """One pre-norm transformer block: (B, T, D) -> (B, Q, D), probs (B, H, T, T) or None.

    Q = T, or num_queries: then only the first Q tokens' outputs are computed. attention_delta,
    scratch: see `ops.attention`. return_mlp_hidden=True appends a third result, the MLP's
    hidden layer after the GELU, (B, Q, M): the units that feature visualisation maximises.
    """
    b = f"blocks.{i}."
    h = layer_norm(x, params[b + "norm1.scale"], params[b + "norm1.bias"], config.layer_norm_eps)
    h, probs = attention(
        h,
        params[b + "attn.qkv.kernel"],
        params[b + "attn.qkv.bias"],
        params[b + "attn.proj.kernel"],
        params[b + "attn.proj.bias"],
        config.num_heads,
        return_probs=return_attention,
        num_queries=num_queries,
        attention_delta=attention_delta,
        scratch=scratch,
    )
    if num_queries is not None:
        x = x[:, :num_queries]
    x = x + h
    h = layer_norm(x, params[b + "norm2.scale"], params[b + "norm2.bias"], config.layer_norm_eps)
    if return_mlp_hidden:
        hidden = mlp_hidden(h, params[b + "mlp.fc1.kernel"], params[b + "mlp.fc1.bias"])  # (B, Q, M)
        return x + dense(hidden, params[b + "mlp.fc2.kernel"], params[b + "mlp.fc2.bias"]), probs, hidden
    x = x + mlp(
        h,
        params[b + "mlp.fc1.kernel"],
        params[b + "mlp.fc1.bias"],
        params[b + "mlp.fc2.kernel"],
        params[b + "mlp.fc2.bias"],
    )
    return x, probs


def forward(
    params,
    config: ViTConfig,
    images,
    *,
    return_attention: bool = False,
    return_hidden: bool = False,
    reductions=None,
    attention_delta=None,
) -> dict:
    """Run the model on preprocessed NHWC images (B, H, W, 3); H, W multiples of the patch.

    Returns a dict:
      "features": (B, D) the final-normed CLS token (DeiT distilled: mean of CLS and dist;
        models with a pre-logits layer: its tanh output, (B, representation_size));
      "logits": (B, classes), only when the model has a head;
      "logits_cls", "logits_dist": (B, classes) each, DeiT distilled with a head: the two heads
        whose mean is "logits";
      "attention": list of (B, heads, T, T) softmax probabilities, one per block, on request;
      "hidden": list of depth + 1 arrays (B, T, D): the embeddings and each block's output,
        on request;
      "reductions": dict of small arrays, when `reductions` (a `vitops.analysis.Reductions`)
        names analyses to compute block by block; only one block's maps exist at a time.
    attention_delta: list of one array per block, broadcastable to (B, heads, T, T), added to
      that block's attention probabilities (zeros change nothing; the gradient with respect to
      them is the gradient with respect to the probabilities, see `ops.attention`).
    """
    if attention_delta is not None and len(attention_delta) != config.depth:
        raise AnalysisError(
            f"attention_delta needs one array per block ({config.depth}), got {len(attention_delta)}"
        )
    grid = check_images(images, config)
    x = embed(params, config, images)
    attentions: list = []
    hidden: list = [x] if return_hidden else []
    need_probs = return_attention or (reductions is not None and reductions.needs_attention)
    all_tokens = return_hidden or (reductions is not None and reductions.needs_all_tokens)
    state = reductions.start(x, config, grid) if reductions is not None else None
    # Maps that only the reductions read, block by block, can share one buffer (see attention).
    scratch: dict | None = {} if state is not None and not return_attention else None
    for i in range(config.depth):
        last = i == config.depth - 1
        # Only the prefix tokens leave the last block for the head and the features, so unless
        # the hidden states are asked for, its other tokens' outputs are never computed (the
        # result is the same; about 1/16 of ViT-B's work is skipped).
        last_only = config.num_prefix_tokens if last and not all_tokens else None
        delta = None if attention_delta is None else attention_delta[i]
        x, probs = block(
            params, config, i, x, need_probs, num_queries=last_only, attention_delta=delta, scratch=scratch
        )
        if return_attention:
            attentions.append(probs)
        if return_hidden:
            hidden.append(x)
        if state is not None:
            state = reductions.step(state, x, probs, last)
    x = layer_norm(x, params["norm.scale"], params["norm.bias"], config.layer_norm_eps)
    out = {}
    if config.distilled:
        cls, dist = x[:, 0], x[:, 1]
        out["features"] = (cls + dist) / 2
        if config.num_classes:
            # Both heads are kept apart for distillation training (DeiT, Sec. 4); inference
            # averages them.
            out["logits_cls"] = dense(cls, params["head.kernel"], params["head.bias"])
            out["logits_dist"] = dense(dist, params["head_dist.kernel"], params["head_dist.bias"])
            out["logits"] = (out["logits_cls"] + out["logits_dist"]) / 2
    else:
        features = x[:, 0]
        if config.representation_size:  # Google i21k: pre_logits = tanh(dense(cls))
            features = ops.tanh(dense(features, params["pre_logits.kernel"], params["pre_logits.bias"]))
        out["features"] = features
        if config.num_classes:
            out["logits"] = dense(features, params["head.kernel"], params["head.bias"])
    if return_attention:
        out["attention"] = attentions
    if return_hidden:
        out["hidden"] = hidden
    if state is not None:
        out["reductions"] = reductions.finish(state)
    return out
