"""Analyses inside the forward pass equal the kernels applied to materialised maps.

Tolerances: float32, the same kernels in another order of operations: relative 1e-5 with an
absolute floor of 1e-6 for probabilities, rollouts and CKA terms; distances (pixels) relative
1e-5. The compiled inference path must also leave nothing for autograd on PyTorch.
"""

import dataclasses

import keras
import numpy as np
import pytest
from helpers.timm_reference import TINY, timm_twin

import vitops
from vitops import analysis
from vitops.analysis.reductions import Reductions
from vitops.app.settings import RunSettings

np_ = keras.ops.convert_to_numpy
BACKEND = keras.config.backend()


@pytest.fixture(scope="module", params=["vit", "deit_distilled"])
def model(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    name = {"vit": "vit_small_patch16_224", "deit_distilled": "deit_tiny_distilled_patch16_224"}[
        request.param
    ]
    return vitops.load(timm_twin(tmp, name, seed=3, **TINY, patch_size=16, num_classes=6)[1])


def materialised(model, x):
    return model(x, return_attention=True, return_hidden=True)


@pytest.mark.parametrize(
    "fusion,ratio,renorm,memory",
    [
        ("mean", 0.0, False, 1 << 30),
        ("max", 0.3, True, 1 << 30),
        ("min", 0.0, False, 1 << 30),
        ("mean", 0.0, False, 0),
        ("max", 0.0, False, 0),
        ("max", 0.3, False, 0),
    ],
    ids=["mean", "max-discard", "min", "mean-second-pass", "max-second-pass", "max-discard-second-pass"],
)
def test_in_forward_equals_materialised_kernels(model, fusion, ratio, renorm, memory):
    config = model.config
    x = np.random.default_rng(0).standard_normal((5, 48, 80, 3)).astype(np.float32)  # 3x5 grid
    grid, prefix = (3, 5), config.num_prefix_tokens
    spec = Reductions(
        distance=True,
        renormalize=renorm,
        rollout="cls",
        head_fusion=fusion,
        discard_ratio=ratio,
        cls_attention=True,
        cls_tokens=True,
        grams=True,
        memory=memory,  # 0: no factor kept, the row carried down in a second pass, a row at a time
    )
    got = model.infer(x, reductions=spec)
    red = {k: np_(v) for k, v in got["reductions"].items()}
    ref = materialised(model, x)
    maps = ref["attention"]

    np.testing.assert_allclose(np_(got["logits"]), np_(ref["logits"]), rtol=1e-5, atol=1e-6)
    distance = np.stack(
        [np_(analysis.mean_attention_distance(a, config.patch_size, prefix, renorm, grid)) for a in maps],
        axis=1,
    )
    assert red["distance"].shape == (5, config.depth, config.num_heads)
    np.testing.assert_allclose(red["distance"], distance, rtol=1e-5)
    rollout = np_(analysis.cls_rollout(maps, fusion, ratio, num_prefix_tokens=prefix, grid=grid))
    np.testing.assert_allclose(red["rollout"].reshape(5, *grid), rollout, rtol=1e-5, atol=1e-6)
    heat = np_(analysis.attention_heatmaps(maps, grid=grid, num_prefix_tokens=prefix))
    np.testing.assert_allclose(red["cls_attention"].reshape(heat.shape), heat, rtol=1e-5, atol=1e-6)
    cls = np.stack([np_(h)[:, 0] for h in ref["hidden"]], axis=1)
    np.testing.assert_allclose(red["cls_tokens"], cls, rtol=1e-5, atol=1e-5)
    assert red["grams"].shape == (config.depth + 1, 5, 5)
    from_grams, from_hidden = analysis.MinibatchCKA(), analysis.MinibatchCKA()
    from_grams.update_grams(red["grams"])
    from_hidden.update(ref["hidden"])
    np.testing.assert_allclose(from_grams.result(), from_hidden.result(), rtol=1e-5, atol=1e-6)


def test_full_rollout_and_partial_specs(model):
    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
    maps = materialised(model, x)["attention"]
    full = np_(model.infer(x, reductions=Reductions(rollout="full"))["reductions"]["rollout"])
    np.testing.assert_allclose(full, np_(analysis.attention_rollout(maps)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full.sum(-1), 1.0, atol=1e-5)
    only = model.infer(x, reductions=Reductions(cls_tokens=True))["reductions"]
    assert set(only) == {"cls_tokens"}
    plain = np_(model.infer(x)["logits"])
    np.testing.assert_allclose(plain, np_(model(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("memory", [1 << 30, 0], ids=["factor-kept", "second-pass"])
def test_single_block_model_rollout(tmp_path, memory):
    """One block: with no factor kept, the row is the last block's own, read in the first pass."""
    ref, path = timm_twin(
        tmp_path, "vit_small_patch16_224", seed=5, **{**TINY, "depth": 1}, patch_size=16, num_classes=3
    )
    model = vitops.load(path)
    x = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype(np.float32)
    got = np_(model.infer(x, reductions=Reductions(rollout="cls", memory=memory))["reductions"]["rollout"])
    expected = np_(analysis.cls_rollout(materialised(model, x)["attention"]))
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)


def test_bad_specs_are_named():
    with pytest.raises(vitops.AnalysisError, match="head_fusion"):
        Reductions(rollout="cls", head_fusion="median")
    with pytest.raises(vitops.AnalysisError, match="rollout must be"):
        Reductions(rollout="row")
    with pytest.raises(vitops.AnalysisError, match="discard_ratio"):
        Reductions(rollout="cls", discard_ratio=1.0)


@pytest.mark.skipif(BACKEND != "torch", reason="autograd recording is PyTorch's")
def test_inference_records_no_autograd(model):
    import torch

    x = np.random.default_rng(0).standard_normal((4, 64, 64, 3)).astype(np.float32)
    out = model.infer(x, reductions=Reductions(distance=True, rollout="cls", grams=True))
    tensors = [out["logits"], *out["reductions"].values()]
    assert not any(t.requires_grad for t in tensors)
    assert all(torch.is_inference(t) for t in tensors)


@pytest.mark.skipif(BACKEND != "jax", reason="XLA's buffer plan is read through JAX")
def test_only_a_chunk_of_maps_is_live(monkeypatch):
    """The reductions read each block's maps a chunk of query rows at a time: beyond what the
    plain forward pass needs, far less than one block's maps (here 1 MiB chunks), plus the
    rollout's head-fused factors when they are kept. Checked on XLA's own buffer assignment,
    for a model whose maps dominate its memory (1,025 tokens, width 96, 6 heads)."""
    import jax

    from vitops.backend import fused

    monkeypatch.setattr(fused, "XLA_ROW_STEP_BYTES", 1 << 20)
    config = vitops.ViTConfig(
        image_size=128, patch_size=4, dim=96, depth=6, num_heads=6, mlp_dim=96, num_classes=0
    )
    params = vitops.VisionTransformer(config)._params()
    b, t = 2, config.num_tokens
    one_block = b * config.num_heads * t * t * 4  # bytes of one block's probabilities, 50 MB
    fused_map = b * t * t * 4  # one head-fused (B, T, T) map
    x = jax.numpy.zeros((b, 128, 128, 3))

    def scratch(**kw):
        f = lambda p, x: vitops.forward(p, config, x, **kw)
        return jax.jit(f).lower(params, x).compile().memory_analysis().temp_size_in_bytes

    spec = Reductions(distance=True, rollout="cls", cls_attention=True, cls_tokens=True, grams=True)
    extra = scratch(reductions=spec.replace(rollout=None)) - scratch()
    assert extra <= one_block / 8, (extra, one_block)  # measured: 6 % of one block
    factors = config.depth * fused_map  # the rollout's factors, kept for its row
    extra = scratch(reductions=spec) - scratch()
    assert extra <= factors + fused_map, (extra, factors, fused_map)


@pytest.mark.parametrize("renorm", [False, True])
def test_chunked_rows_equal_whole_maps_and_float64(model, monkeypatch, renorm):
    """The reductions read in chunks of 7 query rows (the last one padded) equal those of whole
    maps, on every backend; float64 (the explicit path) gives them too, to float32 rounding."""
    from vitops.backend import fused

    spec = Reductions(
        distance=True, renormalize=renorm, rollout="cls", cls_attention=True, token_mass=True, grams=True
    )
    params, config = model._params(), model.config
    x = np.random.default_rng(4).standard_normal((3, *config.image_size, 3)).astype(np.float32)
    t = config.num_tokens
    whole = vitops.forward(params, config, x, reductions=spec)["reductions"]
    monkeypatch.setattr(fused, "row_step_bytes", lambda block, budget: 7 * 3 * config.num_heads * t * 4)
    chunked = vitops.forward(params, config, x, reductions=spec)["reductions"]
    p64 = {k: keras.ops.cast(v, "float64") for k, v in params.items()}
    f64 = vitops.forward(p64, config, x.astype(np.float64), reductions=spec)["reductions"]
    assert whole.keys() == chunked.keys() == f64.keys()
    for k in whole:
        np.testing.assert_allclose(np_(chunked[k]), np_(whole[k]), rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(np_(f64[k]), np_(whole[k]), rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("depth", [6, 7])
@pytest.mark.parametrize("fusion,ratio", [("mean", 0.0), ("min", 0.2)])
def test_rollout_second_pass_in_segments(fusion, ratio, depth):
    """When neither the factors nor every block's input fit the memory budget, every s-th
    block's input is kept and the blocks between are run again in the second pass, which
    `infer` runs after the first, a segment at a time (within one XLA program the blocks run
    again would be merged with the first pass's): the CLS row equals the rollout of the
    materialised maps. A model with more tokens than width (65 tokens, width 16, 6 or 7
    blocks) and a budget that keeps every third input: with 7 blocks the last block's input is
    among them, and with nothing discarded its row is read in the first pass instead."""
    config = vitops.ViTConfig(
        image_size=64, patch_size=8, dim=16, depth=depth, num_heads=2, mlp_dim=32, num_classes=3
    )
    model = vitops.VisionTransformer(config)
    rng = np.random.default_rng(9)
    for v in model.weights:  # larger weights than the initialiser's: maps far from uniform
        v.assign(rng.standard_normal(v.shape).astype(np.float32) * (0.3 if len(v.shape) > 1 else 0.5))
    x = rng.standard_normal((3, 64, 64, 3)).astype(np.float32)
    t, d, b = config.num_tokens, config.dim, 3
    kept = 4 * b * t * d * config.depth  # every block's input
    memory = 2 * kept // 3 + 1  # stride 3: blocks 0 and 3 kept (and 6 of 7)
    assert 4 * b * config.depth * t * t > memory  # the factors do not fit either
    spec = Reductions(rollout="cls", head_fusion=fusion, discard_ratio=ratio, memory=memory)
    got = np_(model.infer(x, reductions=spec)["reductions"]["rollout"])
    maps = model(x, return_attention=True)["attention"]
    ref = np_(analysis.cls_rollout(maps, fusion, ratio, num_prefix_tokens=1, grid=(8, 8))).reshape(3, -1)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert np.abs(ref - ref.mean(-1, keepdims=True)).max() > 1e-3  # not a uniform map
    # what the first pass leaves for the second: every third block's input, on every backend
    params = {k: v.value for k, v in model.variables_by_key.items()}
    out = vitops.forward(params, config, x, reductions=spec, rollout_carry=True)
    assert "rollout" not in out["reductions"]
    kept = sorted(int(k) for k in out["rollout_carry"]["inputs"])
    assert kept == ([0, 3] if depth == 6 or ratio == 0 else [0, 3, 6])
    block_3_input = np_(model(x, return_hidden=True)["hidden"][3])
    np.testing.assert_allclose(np_(out["rollout_carry"]["inputs"]["3"]), block_3_input, rtol=1e-5, atol=1e-5)
    # stopped after block 4: the segments end there
    early = np_(model.infer(x, reductions=spec, num_blocks=4)["reductions"]["rollout"])
    four = np_(analysis.cls_rollout(maps[:4], fusion, ratio, num_prefix_tokens=1, grid=(8, 8)))
    np.testing.assert_allclose(early, four.reshape(3, -1), rtol=1e-5, atol=1e-6)
    # the same pass run whole within `forward` (every input kept, or every third on PyTorch)
    whole = vitops.forward(params, config, x, reductions=spec)["reductions"]["rollout"]
    np.testing.assert_allclose(np_(whole), ref, rtol=1e-5, atol=1e-6)


def _timm_states(ref, images_nhwc):
    """timm's tokens after the embedding (and its pre-norm) and after every block, (L+1) x
    (B, T, D), run through timm's own modules."""
    import torch
    from helpers.timm_reference import nchw

    with torch.no_grad():
        x = ref.norm_pre(ref.patch_drop(ref._pos_embed(ref.patch_embed(nchw(images_nhwc)))))
        states = [x]
        for blk in ref.blocks:
            states.append(blk(states[-1]))
    return states


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("deit_tiny_distilled_patch16_224", {}),  # two heads, averaged
        ("vit_small_patch14_reg4_dinov2", {"patch_size": 16, "num_classes": 6}),  # registers, LayerScale
        ("vit_base_patch16_siglip_224", {"num_classes": 6}),  # attention-pool head, no class token
        ("vit_small_patch16_224", {"global_pool": "avg", "fc_norm": True, "num_classes": 0}),  # headless
    ],
    ids=["deit-distilled", "dinov2-reg", "siglip", "avg-headless"],
)
def test_token_norms_and_logit_lens_equal_timm(tmp_path, name, kwargs):
    """token_norms: the norms of timm's tokens after every block; logit_lens: timm's own
    final norm and head (forward_head) applied to each of them, as if it were the last."""
    import torch

    kw = dict(TINY, **kwargs)
    kw.setdefault("num_classes", 5)
    ref, path = timm_twin(tmp_path, name, seed=11, **kw)
    model = vitops.load(path)
    x = np.random.default_rng(4).standard_normal((3, 64, 48, 3)).astype(np.float32)  # 4x3 grid
    got = model.infer(x, reductions=Reductions(token_norms=True, logit_lens=True))["reductions"]
    states = _timm_states(ref, x)
    norms = np.stack([np.linalg.norm(s.double().numpy(), axis=-1) for s in states], axis=1)
    with torch.no_grad():
        lens = np.stack([ref.forward_head(ref.norm(s)).double().numpy() for s in states], axis=1)
    assert np_(got["token_norms"]).shape == norms.shape  # (B, L+1, T): prefix tokens first
    np.testing.assert_allclose(np_(got["token_norms"]), norms, rtol=1e-5, atol=1e-5)
    assert np_(got["logit_lens"]).shape == lens.shape
    scale = np.abs(lens).max()
    np.testing.assert_allclose(np_(got["logit_lens"]), lens, rtol=1e-4, atol=1e-5 * scale)
    # the last block's readout is the model's own output
    final = model.infer(x)
    last = final["logits"] if model.config.num_classes else final["features"]
    np.testing.assert_allclose(np_(got["logit_lens"])[:, -1], np_(last), rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.skipif(BACKEND != "torch", reason="views that keep their base alive: eager PyTorch")
@pytest.mark.parametrize("memory", [1 << 30, 0], ids=["factor-kept", "second-pass"])
def test_the_pass_keeps_no_view_of_a_larger_tensor(model, monkeypatch, memory):
    """What the reductions keep from block to block holds its own memory: a kept view of a
    block's output (the class token x[:, 0], say) would keep all of that output (B, T, D) alive
    until the pass ends, one per block."""
    views, steps = [], []

    def kept_views(value, path):
        if hasattr(value, "untyped_storage"):
            own = value.numel() * value.element_size()
            if value.untyped_storage().nbytes() > 2 * own:  # (the patches of x: x less its prefix)
                views.append((path, tuple(value.shape), value.untyped_storage().nbytes(), own))
        elif isinstance(value, dict):
            for k, v in value.items():
                kept_views(v, f"{path}.{k}")
        elif isinstance(value, (list, tuple)):
            for v in value:
                kept_views(v, f"{path}[]")

    step = Reductions.step

    def checked(self, state, x, parts, last):
        state = step(self, state, x, parts, last)
        steps.append(last)
        kept_views(state, "state")
        return state

    monkeypatch.setattr(Reductions, "step", checked)
    spec = dataclasses.replace(RunSettings().reductions(), memory=memory)
    x = np.random.default_rng(4).standard_normal((3, 64, 48, 3)).astype(np.float32)
    model.infer(x, reductions=spec)
    assert len(steps) == model.config.depth and steps[-1]  # every block's step was checked
    assert views == []
