"""Hugging Face, DeiT / DINO release and Google .npz checkpoints, against their references."""

import json

import keras
import numpy as np
import pytest
from helpers.timm_reference import TINY, make_timm, randomize_, rel_err, timm_outputs

import vitops
from vitops.converters import ConversionError

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")

to_np = keras.ops.convert_to_numpy
IMAGENET = [0.485, 0.456, 0.406]


# ---- Hugging Face ----


def hf_model(kind, num_labels=5, eps=1e-12):
    import transformers as tf_

    common = dict(
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=192,
        image_size=48,
        patch_size=16,
        layer_norm_eps=eps,
        attn_implementation="eager",
    )
    if kind == "vit":
        model = tf_.ViTForImageClassification(tf_.ViTConfig(num_labels=num_labels, **common))
    elif kind == "dino":
        model = tf_.ViTModel(tf_.ViTConfig(**common), add_pooling_layer=True)
    else:
        model = tf_.DeiTForImageClassificationWithTeacher(tf_.DeiTConfig(num_labels=num_labels, **common))
    return randomize_(model.eval(), seed=7)


@pytest.mark.parametrize(
    "kind,mean,family", [("vit", [0.5] * 3, "vit"), ("dino", IMAGENET, "dino"), ("deit", IMAGENET, "deit")]
)
def test_hugging_face_matches_transformers(tmp_path, kind, mean, family):
    model = hf_model(kind)
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean}))
    config = vitops.convert(tmp_path / "hf", tmp_path / "m.safetensors")
    assert config.family == family and config.layer_norm_eps == 1e-12
    assert config.distilled == (kind == "deit")
    ours = vitops.load(tmp_path / "m.safetensors")
    images = np.random.default_rng(0).standard_normal((2, 48, 48, 3)).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2), output_attentions=True)
    out = ours(images, return_attention=True)
    if kind == "dino":
        assert rel_err(to_np(out["features"]), ref.last_hidden_state[:, 0].numpy()) <= 1e-4
    else:
        assert rel_err(to_np(out["logits"]), ref.logits.numpy()) <= 1e-4
    assert len(ref.attentions) == 3
    for a, r in zip(out["attention"], ref.attentions):
        assert np.abs(to_np(a) - r.numpy()).max() <= 1e-5


def test_hugging_face_weight_file_and_bin(tmp_path):
    model = hf_model("vit")
    model.save_pretrained(tmp_path / "hf")
    torch.save(model.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    a = vitops.convert(tmp_path / "hf" / "model.safetensors", tmp_path / "a.safetensors")
    b = vitops.convert(tmp_path / "hf" / "pytorch_model.bin", tmp_path / "b.safetensors", format="hf")
    assert a == b
    pa, _ = vitops.load_params(tmp_path / "a.safetensors")
    pb, _ = vitops.load_params(tmp_path / "b.safetensors")
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


def test_hugging_face_needs_its_config(tmp_path):
    model = hf_model("vit")
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "config.json").unlink()
    with pytest.raises(ConversionError, match="config.json"):
        vitops.convert(tmp_path / "hf" / "model.safetensors", tmp_path / "o.safetensors")


# ---- DeiT and DINO releases ----


def test_deit_release_wrapper(tmp_path):
    ref = make_timm("deit_tiny_distilled_patch16_224", **TINY, num_classes=4)
    torch.save({"model": ref.state_dict()}, tmp_path / "deit.pth")
    config = vitops.convert(tmp_path / "deit.pth", tmp_path / "m.safetensors")
    assert config.family == "deit" and config.distilled
    with vitops.WeightFile(tmp_path / "m.safetensors") as f:
        assert f.metadata["source_format"] == "deit"
    images = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
    y = to_np(vitops.load(tmp_path / "m.safetensors")(images))
    assert rel_err(y, timm_outputs(ref, images)["output"]) <= 1e-4


def test_dino_training_checkpoint_teacher_and_student(tmp_path):
    teacher = make_timm("vit_small_patch16_224.dino", **TINY, num_classes=0, seed=1)
    student = make_timm("vit_small_patch16_224.dino", **TINY, num_classes=0, seed=2)
    rng = torch.Generator().manual_seed(0)
    projection_head = {
        "head.mlp.0.weight": torch.randn(32, 128, generator=rng),
        "head.last_layer.weight_g": torch.randn(64, 1, generator=rng),
    }

    def wrap(model):
        sd = {f"module.backbone.{k}": v for k, v in model.state_dict().items()}
        sd.update({f"module.{k}": v for k, v in projection_head.items()})
        return sd

    torch.save({"teacher": wrap(teacher), "student": wrap(student), "epoch": 100}, tmp_path / "ck.pth")
    images = np.random.default_rng(2).standard_normal((2, 64, 64, 3)).astype(np.float32)
    for which, ref in (("teacher", teacher), ("student", student)):
        config = vitops.convert(tmp_path / "ck.pth", tmp_path / f"{which}.safetensors", which=which)
        assert config.family == "dino" and config.num_classes == 0
        y = to_np(vitops.load(tmp_path / f"{which}.safetensors")(images))
        assert rel_err(y, timm_outputs(ref, images)["output"]) <= 1e-4


def test_dino_backbone_release(tmp_path):
    ref = make_timm("vit_small_patch16_224.dino", **TINY, num_classes=0)
    torch.save(ref.state_dict(), tmp_path / "dino_deitsmall16_pretrain.pth")
    config = vitops.convert(
        tmp_path / "dino_deitsmall16_pretrain.pth", tmp_path / "m.safetensors", format="dino"
    )
    assert config.family == "dino"


# ---- Google .npz ----


def write_google_npz(model, path, style="original", pre_logits=None):
    """A timm model's weights under the published .npz key layout."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    d = sd["cls_token"].shape[-1]
    h = model.blocks[0].attn.num_heads
    pfx = "params/" if style != "original" else ""
    ln = ("LayerNorm_0", "LayerNorm_2") if style == "original" else ("LayerNorm_0", "LayerNorm_1")
    mha = "MultiHeadDotProductAttention_1" if style == "original" else "MultiHeadDotProductAttention_0"
    mlp = "MlpBlock_3" if style == "original" else "MlpBlock_0"
    out = {
        f"{pfx}embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        f"{pfx}embedding/bias": sd["patch_embed.proj.bias"],
        f"{pfx}cls": sd["cls_token"],
        f"{pfx}Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        f"{pfx}Transformer/encoder_norm/scale": sd["norm.weight"],
        f"{pfx}Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    blocks = []
    for i in range(len(model.blocks)):
        b = f"blocks.{i}."
        qkv_w, qkv_b = sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"]
        blk = {
            f"{ln[0]}/scale": sd[b + "norm1.weight"],
            f"{ln[0]}/bias": sd[b + "norm1.bias"],
            f"{ln[1]}/scale": sd[b + "norm2.weight"],
            f"{ln[1]}/bias": sd[b + "norm2.bias"],
            f"{mha}/out/kernel": sd[b + "attn.proj.weight"].T.reshape(h, d // h, d),
            f"{mha}/out/bias": sd[b + "attn.proj.bias"],
            f"{mlp}/Dense_0/kernel": sd[b + "mlp.fc1.weight"].T,
            f"{mlp}/Dense_0/bias": sd[b + "mlp.fc1.bias"],
            f"{mlp}/Dense_1/kernel": sd[b + "mlp.fc2.weight"].T,
            f"{mlp}/Dense_1/bias": sd[b + "mlp.fc2.bias"],
        }
        for j, name in enumerate(("query", "key", "value")):
            blk[f"{mha}/{name}/kernel"] = qkv_w[j * d : (j + 1) * d].T.reshape(d, h, d // h)
            blk[f"{mha}/{name}/bias"] = qkv_b[j * d : (j + 1) * d].reshape(h, d // h)
        blocks.append(blk)
    if style == "scan":
        for k in blocks[0]:
            out[f"{pfx}Transformer/encoderblock/{k}"] = np.stack([blk[k] for blk in blocks])
    else:
        for i, blk in enumerate(blocks):
            out.update({f"{pfx}Transformer/encoderblock_{i}/{k}": v for k, v in blk.items()})
    if pre_logits is not None:
        out[f"{pfx}pre_logits/kernel"], out[f"{pfx}pre_logits/bias"], hk, hb = pre_logits
        out[f"{pfx}head/kernel"], out[f"{pfx}head/bias"] = hk, hb
    elif "head.weight" in sd:
        out[f"{pfx}head/kernel"], out[f"{pfx}head/bias"] = sd["head.weight"].T, sd["head.bias"]
    np.savez(path, **out)


def test_npz_writer_agrees_with_timms_loader(tmp_path):
    from timm.models.vision_transformer import _load_weights

    ref = make_timm("vit_small_patch16_224", **TINY, num_classes=6)
    write_google_npz(ref, tmp_path / "g.npz")
    fresh = make_timm("vit_small_patch16_224", **TINY, num_classes=6, seed=99)
    _load_weights(fresh, str(tmp_path / "g.npz"))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("style", ["original", "big_vision", "scan"])
def test_google_npz_matches_timm(tmp_path, style):
    ref = make_timm("vit_small_patch16_224", **TINY, num_classes=6)
    write_google_npz(ref, tmp_path / "g.npz", style)
    config = vitops.convert(tmp_path / "g.npz", tmp_path / "m.safetensors")
    assert (config.family, config.num_heads, config.representation_size) == ("vit", 2, 0)
    images = np.random.default_rng(3).standard_normal((2, 64, 80, 3)).astype(np.float32)
    y = to_np(vitops.load(tmp_path / "m.safetensors")(images))
    assert rel_err(y, timm_outputs(ref, images)["output"]) <= 1e-4


def test_google_npz_with_pre_logits(tmp_path):
    ref = make_timm("vit_small_patch16_224", **TINY, num_classes=0)
    rng = np.random.default_rng(4)
    pre = (
        rng.standard_normal((128, 96)).astype(np.float32) / 11,
        rng.standard_normal(96).astype(np.float32),
        rng.standard_normal((96, 21)).astype(np.float32) / 10,
        rng.standard_normal(21).astype(np.float32),
    )
    write_google_npz(ref, tmp_path / "i21k.npz", pre_logits=pre)
    config = vitops.convert(tmp_path / "i21k.npz", tmp_path / "m.safetensors")
    assert (config.representation_size, config.num_classes) == (96, 21)
    images = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
    features = timm_outputs(ref, images)["output"].astype(np.float64)  # final-normed CLS
    pre_logits = np.tanh(features @ pre[0] + pre[1])
    out = vitops.load(tmp_path / "m.safetensors")(images, return_hidden=True)
    assert rel_err(to_np(out["features"]), pre_logits) <= 1e-4
    assert rel_err(to_np(out["logits"]), pre_logits @ pre[2] + pre[3]) <= 1e-4


def test_npz_arch_is_checked_including_image_size(tmp_path):
    # a ViT-Ti/16 trained at 384 px: the shapes fit vit_tiny_patch16_384, not its 224 sibling
    ref = make_timm("vit_tiny_patch16_384", num_classes=5)
    write_google_npz(ref, tmp_path / "ti.npz")
    with pytest.raises(
        ConversionError, match="does not match architecture 'vit_tiny_patch16_224'.*image_size"
    ):
        vitops.convert(tmp_path / "ti.npz", tmp_path / "o.safetensors", arch="vit_tiny_patch16_224")
    assert not (tmp_path / "o.safetensors").exists()
    config = vitops.convert(tmp_path / "ti.npz", tmp_path / "o.safetensors", arch="vit_tiny_patch16_384")
    assert (config.name, config.image_size, config.num_classes) == ("vit_tiny_patch16_384", (384, 384), 5)


def test_npz_errors(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ConversionError, match="cannot read"):
        vitops.convert(tmp_path / "bad.npz", tmp_path / "o.safetensors")
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(ConversionError, match="not a Google ViT"):
        vitops.convert(tmp_path / "other.npz", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
