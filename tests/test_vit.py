"""The forward pass against timm: outputs, every attention map and every hidden state.

Tolerances (the foundation issue's contract): output relative error <= 1e-4 (max abs error
over max abs value), attention probabilities absolute error <= 1e-5. Measured float32
differences are around 5e-7.
"""

import keras
import numpy as np
import pytest
import torch.nn.functional as F
from helpers.timm_reference import TINY, make_timm, rel_err, save_state_dict, timm_outputs

import vitops

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")

OUT_RTOL = 1e-4
ATTN_ATOL = 1e-5

to_np = keras.ops.convert_to_numpy

FAMILIES = {
    # timm name, extra kwargs: plain ViT, DeiT distilled, DeiT plain, DINO (headless)
    "vit": ("vit_small_patch16_224", dict(num_classes=10)),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(num_classes=10)),
    "deit": ("deit_tiny_patch16_224", dict(num_classes=7)),
    "dino": ("vit_small_patch16_224.dino", dict(num_classes=0)),
}


def convert_timm(tmp_path, timm_model, arch=None):
    src, dst = tmp_path / "timm.safetensors", tmp_path / "vitops.safetensors"
    save_state_dict(timm_model, src)
    vitops.convert(src, dst, arch=arch)
    return dst


def assert_matches(model, ref_model, images):
    ref = timm_outputs(ref_model, images)
    out = model(images, return_attention=True, return_hidden=True)
    y = out["logits"] if "logits" in out else out["features"]
    assert rel_err(to_np(y), ref["output"]) <= OUT_RTOL
    assert len(out["attention"]) == len(ref["attention"]) == model.config.depth
    for a, r in zip(out["attention"], ref["attention"]):
        assert a.shape == r.shape
        assert np.abs(to_np(a) - r).max() <= ATTN_ATOL
    assert len(out["hidden"]) == len(ref["hidden"]) == model.config.depth + 1
    for h, r in zip(out["hidden"], ref["hidden"]):
        assert rel_err(to_np(h), r) <= OUT_RTOL


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("size", [(64, 64), (96, 48), (32, 80)], ids=["native", "larger", "smaller"])
def test_tiny_matches_timm(tmp_path, family, size):
    name, kw = FAMILIES[family]
    ref_model = make_timm(name, seed=list(FAMILIES).index(family), **TINY, patch_size=16, **kw)
    model = vitops.load(convert_timm(tmp_path, ref_model))
    images = np.random.default_rng(1).standard_normal((2, *size, 3)).astype(np.float32)
    assert_matches(model, ref_model, images)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,arch,size",
    [
        ("vit_small_patch16_224", "vit_small_patch16_224", (224, 224)),
        ("vit_small_patch16_224", "vit_small_patch16_224", (288, 160)),
        ("deit_tiny_distilled_patch16_224", "deit_tiny_distilled_patch16_224", (224, 224)),
        ("deit_tiny_distilled_patch16_224", "deit_tiny_distilled_patch16_224", (320, 320)),
        ("vit_small_patch16_224.dino", "dino_vits16", (224, 224)),
        ("vit_small_patch16_224.dino", "vit_small_patch16_224.dino", (160, 192)),
    ],
)
def test_real_size_matches_timm(tmp_path, name, arch, size):
    ref_model = make_timm(name, seed=3)
    model = vitops.load(convert_timm(tmp_path, ref_model, arch=arch))
    images = np.random.default_rng(2).standard_normal((2, *size, 3)).astype(np.float32)
    assert_matches(model, ref_model, images)


def dino_interpolate_pos_encoding(pos_embed, h_patches, w_patches):
    """DINO's interpolate_pos_encoding (facebookresearch/dino), in torch, as the reference."""
    n = pos_embed.shape[1] - 1
    cls, grid = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(np.sqrt(n))
    grid = F.interpolate(
        grid.reshape(1, side, side, -1).permute(0, 3, 1, 2),
        scale_factor=((h_patches + 0.1) / np.sqrt(n), (w_patches + 0.1) / np.sqrt(n)),
        mode="bicubic",
    )
    assert grid.shape[-2:] == (h_patches, w_patches)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], dim=1)


@pytest.mark.parametrize("size", [(96, 96), (48, 112)])
def test_dino_interpolation_option(tmp_path, size):
    ref_model = make_timm("vit_small_patch16_224.dino", **TINY, patch_size=16, num_classes=0)
    path = convert_timm(tmp_path, ref_model)
    model = vitops.load(path, pos_interp="dino")
    # The reference: a timm model at the new size whose table was resampled DINO's way.
    target = make_timm(
        "vit_small_patch16_224.dino",
        **{**TINY, "img_size": size},
        patch_size=16,
        num_classes=0,
        dynamic_img_size=False,
    )
    sd = dict(ref_model.state_dict())
    sd["pos_embed"] = dino_interpolate_pos_encoding(sd["pos_embed"], size[0] // 16, size[1] // 16)
    target.load_state_dict(sd)
    images = np.random.default_rng(4).standard_normal((2, *size, 3)).astype(np.float32)
    assert_matches(model, target, images)
    # and the default (timm) resampling really is a different function
    timm_mode = vitops.load(path)
    assert rel_err(to_np(timm_mode(images)), to_np(model(images))) > 1e-4


def test_fused_and_explicit_attention_paths_agree(tmp_path):
    ref_model = make_timm("deit_tiny_distilled_patch16_224", **TINY, patch_size=16, num_classes=5)
    model = vitops.load(convert_timm(tmp_path, ref_model))
    images = np.random.default_rng(5).standard_normal((3, 64, 64, 3)).astype(np.float32)
    plain = to_np(model(images))  # fused dot_product_attention
    explicit = to_np(model(images, return_attention=True)["logits"])
    assert rel_err(plain, explicit) <= 1e-5


@pytest.mark.parametrize(
    "step_bytes,queries",
    [
        (1 << 20, None),  # every head in one step
        (2 * 23 * 23 * 4, None),  # two of the six heads per step
        (23 * 23 * 4 // 3, None),  # one head at a time, its queries in chunks of 8 (the last padded)
        (23 * 23 * 4 // 3, 2),  # the same for the first two queries only (the last block)
    ],
)
def test_attend_in_steps_equals_float64_attention(monkeypatch, step_bytes, queries):
    """The fused attention without maps, in however many steps the XLA path takes, against
    softmax(q k^T / sqrt(E)) v in float64 numpy."""
    from vitops.backend import fused

    monkeypatch.setattr(fused, "ATTENTION_STEP_BYTES", step_bytes)
    rng = np.random.default_rng(3)
    b, t, h, e = 2, 23, 6, 8
    q, k, v = (rng.standard_normal((b, t, h, e)).astype(np.float32) for _ in range(3))
    q = q[:, :queries] if queries else q
    logits = np.einsum("bqhe,bkhe->bhqk", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(e)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    want = np.einsum("bhqk,bkhe->bqhe", p / p.sum(-1, keepdims=True), v.astype(np.float64))
    got = to_np(fused.attend(*(keras.ops.convert_to_tensor(a) for a in (q, k, v)), e**-0.5))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_attention_maps_with_and_without_autograd(tmp_path):
    """On PyTorch the softmax is written over the logits when autograd is off (inference,
    predict_on_batch), and kept out of place when it records: both give timm's maps, and
    gradients still flow through the maps."""
    ref_model = make_timm("vit_small_patch16_224", **TINY, patch_size=16, num_classes=4)
    model = vitops.load(convert_timm(tmp_path, ref_model))
    images = np.random.default_rng(7).standard_normal((2, 48, 64, 3)).astype(np.float32)
    with torch.inference_mode():
        assert_matches(model, ref_model, images)
    with torch.no_grad():
        assert_matches(model, ref_model, images)
    if keras.config.backend() == "torch":
        x = torch.tensor(images, requires_grad=True)
        out = model(x, return_attention=True)
        assert all(a.requires_grad for a in out["attention"])
        (out["attention"][-1][:, :, 0] ** 2).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


def test_output_structure(tmp_path):
    ref_model = make_timm("deit_tiny_distilled_patch16_224", **TINY, patch_size=16, num_classes=5)
    model = vitops.load(convert_timm(tmp_path, ref_model))
    images = np.zeros((2, 64, 48, 3), np.float32)
    out = model(images, return_attention=True, return_hidden=True)
    t = 2 + (64 // 16) * (48 // 16)
    assert to_np(out["logits"]).shape == (2, 5)
    assert to_np(out["features"]).shape == (2, 128)
    assert [tuple(a.shape) for a in out["attention"]] == [(2, 2, t, t)] * 3
    assert [tuple(h.shape) for h in out["hidden"]] == [(2, t, 128)] * 4
    assert to_np(model(images)).shape == (2, 5)
    assert set(model(images, return_hidden=True)) == {
        "logits",
        "logits_cls",
        "logits_dist",
        "features",
        "hidden",
    }
    heads = model(images, return_dict=True)
    np.testing.assert_allclose(
        to_np(heads["logits"]),
        (to_np(heads["logits_cls"]) + to_np(heads["logits_dist"])) / 2,
        rtol=1e-6,
        atol=1e-6,
    )
    # attention rows are probability distributions
    np.testing.assert_allclose(to_np(out["attention"][0]).sum(-1), 1.0, atol=1e-5)
    # without hidden states the last block computes only the prefix tokens' outputs, but its
    # attention map is still whole, and every output is the same
    lean = model(images, return_attention=True)
    for a, b in zip(lean["attention"], out["attention"]):
        np.testing.assert_allclose(to_np(a), to_np(b), rtol=1e-5, atol=1e-7)
    for key in ("logits", "features"):
        np.testing.assert_allclose(to_np(lean[key]), to_np(out[key]), rtol=1e-5, atol=1e-6)


def test_stop_early(tmp_path):
    """num_blocks=k: the first k blocks' hidden states and maps equal timm's, the later blocks and
    the head are never read (their weights are absent here), on the compiled path too."""
    from vitops.analysis import Reductions

    ref_model = make_timm("vit_small_patch16_224", **TINY, patch_size=16, num_classes=3)
    model = vitops.load(convert_timm(tmp_path, ref_model))
    images = np.random.default_rng(8).standard_normal((2, 48, 64, 3)).astype(np.float32)
    ref = timm_outputs(ref_model, images)
    depth, k = model.config.depth, model.config.depth - 1
    kept = ("patch_embed.", "cls_token", "pos_embed", *(f"blocks.{i}." for i in range(k)))
    early = {n: v for n, v in model.get_params().items() if n.startswith(kept)}
    assert len(early) < len(model.get_params()) - 4  # the last block, the final norm and the head gone
    out = vitops.forward(early, model.config, images, return_attention=True, return_hidden=True, num_blocks=k)
    assert set(out) == {"attention", "hidden"} and len(out["hidden"]) == k + 1 and len(out["attention"]) == k
    for h, r in zip(out["hidden"], ref["hidden"][: k + 1]):
        assert rel_err(to_np(h), r) <= OUT_RTOL
    for a, r in zip(out["attention"], ref["attention"][:k]):
        assert np.abs(to_np(a) - r).max() <= ATTN_ATOL
    spec = Reductions(distance=True, rollout="cls", cls_tokens=True)
    full = model.infer(images, reductions=spec)["reductions"]
    part = model.infer(images, reductions=spec, num_blocks=1, return_hidden=True)
    np.testing.assert_allclose(
        to_np(part["reductions"]["distance"]), to_np(full["distance"])[:, :1], rtol=1e-5
    )
    np.testing.assert_allclose(
        to_np(part["reductions"]["cls_tokens"]), to_np(full["cls_tokens"])[:, :2], rtol=1e-5
    )
    # one block's rollout row: its own factor's class-token row, (mean_h A + I) / 2 for softmax maps
    a = ref["attention"][0].astype(np.float64).mean(1)[:, 0]  # (B, T)
    a[:, 0] += 1.0
    np.testing.assert_allclose(to_np(part["reductions"]["rollout"]), a[:, 1:] / 2, rtol=1e-5, atol=1e-7)
    assert rel_err(to_np(part["hidden"][1]), ref["hidden"][1]) <= OUT_RTOL
    for bad, message in [
        (0, "num_blocks must be"),
        (depth + 1, "num_blocks must be"),
        (True, "num_blocks must be"),
    ]:
        with pytest.raises(vitops.AnalysisError, match=message):
            model.infer(images, return_hidden=True, num_blocks=bad)
    with pytest.raises(vitops.AnalysisError, match="ask for return_hidden"):
        model(images, num_blocks=1)


def test_predict_matches_call(tmp_path):
    ref_model = make_timm("vit_small_patch16_224.dino", **TINY, patch_size=16, num_classes=0)
    model = vitops.load(convert_timm(tmp_path, ref_model))
    images = np.random.default_rng(6).standard_normal((5, 64, 64, 3)).astype(np.float32)
    expected = timm_outputs(ref_model, images)["output"]
    assert rel_err(model.predict(images, batch_size=2, verbose=0), expected) <= OUT_RTOL
    assert rel_err(to_np(model.predict_on_batch(images)), expected) <= OUT_RTOL


@pytest.mark.parametrize(
    "shape,message",
    [
        ((2, 64, 60, 3), "not a multiple of the patch size 16"),
        ((2, 64, 64, 1), "3 channels"),
        ((2, 64, 64, 4), "3 channels"),
        ((64, 64, 3), "rank 4"),
    ],
)
def test_bad_images_are_named(tmp_path, shape, message):
    ref_model = make_timm("vit_small_patch16_224", **TINY, patch_size=16, num_classes=3)
    model = vitops.load(convert_timm(tmp_path, ref_model))
    with pytest.raises(ValueError, match=message):
        model(np.zeros(shape, np.float32))


def test_functional_forward_takes_a_plain_dict(tmp_path):
    ref_model = make_timm("vit_small_patch16_224", **TINY, patch_size=16, num_classes=3)
    path = convert_timm(tmp_path, ref_model)
    params, config = vitops.load_params(path)
    images = np.random.default_rng(7).standard_normal((2, 64, 64, 3)).astype(np.float32)
    out = vitops.forward(params, config, images)
    assert rel_err(to_np(out["logits"]), timm_outputs(ref_model, images)["output"]) <= OUT_RTOL
