"""The second-generation families (DeiT III, DINOv2 with and without registers, CLIP and SigLIP
image towers, DINOv3) against timm, transformers and the authors' release layouts, created
offline with every tensor random: at the native size and at another multiple of the patch,
outputs within 1e-5 relative, every block's attention within 1e-6, the hidden states (and so
the token order) within 1e-5."""

import os

import keras
import numpy as np
import pytest
from helpers.timm_reference import make_timm, randomize_, rel_err, save_state_dict, timm_outputs

import vitops
from vitops.converters import ConversionError

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

to_np = keras.ops.convert_to_numpy
SMALL = dict(embed_dim=128, num_heads=2, depth=2)


def compare(model, want, x, key):
    """Max relative error of the output, max absolute error of the attention, max relative
    error of the hidden states; and the counts compared."""
    out = model(x, return_attention=True, return_hidden=True)
    att = [to_np(a) for a in out["attention"][: len(want["attention"])]]
    assert len(att) == len(want["attention"]) and len(out["hidden"]) == len(want["hidden"])
    return (
        rel_err(to_np(out[key]), want["output"]),
        max(float(np.abs(a - b).max()) for a, b in zip(att, want["attention"])),
        max(rel_err(to_np(a), b) for a, b in zip(out["hidden"], want["hidden"])),
    )


def within(errors):
    out, att, hid = errors
    assert out < 1e-5 and att < 1e-6 and hid < 1e-5, errors


def projection_head(ref):
    """timm holds CLIP's bias-free projection as its head, with a zero bias."""
    with torch.no_grad():
        ref.head.bias.zero_()
    return ref


# ---- timm: every family, its tokens in timm's order ----

# (timm name, constructor changes, size for another multiple of the patch, expected config)
TIMM_FAMILIES = [
    (
        "deit3_small_patch16_224",
        dict(img_size=64, num_classes=7),
        (48, 80),
        dict(family="deit3", pos_embed="patches"),
    ),
    (
        "vit_small_patch14_dinov2",
        dict(img_size=56),
        (70, 42),
        dict(family="dinov2", pos_embed="all", layer_scale=True),
    ),
    (
        "vit_small_patch14_reg4_dinov2",
        dict(img_size=56),
        (42, 70),
        dict(family="dinov2", reg_tokens=4, num_prefix_tokens=5, pos_embed="patches"),
    ),
    (
        "vit_giant_patch14_dinov2",  # SwiGLU, packed [gate | value]
        dict(img_size=42, mlp_ratio=2.66667 * 2, act_layer=torch.nn.SiLU, mlp_layer=timm.layers.SwiGLUPacked),
        (56, 28),
        dict(family="dinov2", mlp="swiglu", act="silu"),
    ),
    (
        "vit_base_patch16_clip_224",
        dict(img_size=64, num_classes=9),
        (80, 48),
        dict(family="clip", pre_norm=True, patch_bias=False, layer_norm_eps=1e-5),
    ),
    (
        "vit_base_patch16_siglip_224",
        dict(img_size=64),
        (48, 80),
        dict(family="siglip", class_token=False, pool="map", num_prefix_tokens=0),
    ),
    (
        "vit_small_patch16_dinov3_qkvb",
        dict(img_size=64, global_pool="token"),
        (48, 80),
        dict(family="dinov3", pos_embed="none", reg_tokens=4, rope_base=100.0),
    ),
    ("vit_small_plus_patch16_dinov3", dict(img_size=64, global_pool="token"), (48, 80), dict(mlp="swiglu")),
    (
        "vit_small_patch16_224",
        dict(img_size=64, global_pool="avg", num_classes=5),
        (48, 80),
        dict(fc_norm=True),
    ),
]


@pytest.mark.parametrize("name,kwargs,other,expected", TIMM_FAMILIES, ids=[c[0] for c in TIMM_FAMILIES])
def test_timm_families_match_timm(tmp_path, name, kwargs, other, expected):
    ref = make_timm(name, seed=1, **{**SMALL, **kwargs})
    save_state_dict(ref, tmp_path / "ck.safetensors")
    config = vitops.convert(tmp_path / "ck.safetensors", tmp_path / "m.safetensors")
    assert {k: getattr(config, k) for k in expected} == expected
    assert config.num_prefix_tokens == ref.num_prefix_tokens
    model = vitops.load(tmp_path / "m.safetensors")
    key = "logits" if config.num_classes else "features"
    for size in (config.image_size, other):
        x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
        within(compare(model, timm_outputs(ref, x), x, key))


def test_clip_quickgelu_by_act_and_the_projection(tmp_path):
    """OpenAI's towers use QuickGELU, which the tensors cannot show: `act` names it."""
    ref = projection_head(
        make_timm("vit_base_patch16_clip_quickgelu_224", seed=2, **SMALL, img_size=64, num_classes=48)
    )
    save_state_dict(ref, tmp_path / "ck.safetensors")
    config = vitops.convert(tmp_path / "ck.safetensors", tmp_path / "b.safetensors", act="quick_gelu")
    assert (config.act, config.proj_dim, config.num_classes) == ("quick_gelu", 48, 0)  # timm's zero bias
    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
    want = timm_outputs(ref, x)
    within(compare(vitops.load(tmp_path / "b.safetensors"), want, x, "embedding"))
    vitops.convert(tmp_path / "ck.safetensors", tmp_path / "c.safetensors")  # unnamed: timm's GELU tower
    assert compare(vitops.load(tmp_path / "c.safetensors"), want, x, "embedding")[0] > 1e-3


def test_a_parallel_block_vit_is_a_one_line_error_naming_what_has_no_place(tmp_path):
    ref = make_timm("vit_small_patch16_18x2_224", **SMALL, img_size=32, num_classes=3)
    save_state_dict(ref, tmp_path / "ck.safetensors")
    with pytest.raises(ConversionError) as e:
        vitops.convert(tmp_path / "ck.safetensors", tmp_path / "o.safetensors")
    assert "\n" not in str(e.value) and "blocks.0.attns.0.attn.qkv.weight" in str(e.value)
    assert not (tmp_path / "o.safetensors").exists()


# ---- Hugging Face ----


def hf_model(kind):
    import transformers as tr

    t = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    vision = dict(**t, image_size=64, patch_size=16, intermediate_size=384)
    if kind == "dinov2":
        return tr.Dinov2Model(tr.Dinov2Config(**t, image_size=56, patch_size=14, mlp_ratio=3))
    if kind == "dinov2-swiglu":
        return tr.Dinov2Model(tr.Dinov2Config(**t, image_size=42, patch_size=14, use_swiglu_ffn=True))
    if kind == "dinov2-registers":
        return tr.Dinov2WithRegistersModel(
            tr.Dinov2WithRegistersConfig(**t, image_size=56, patch_size=14, mlp_ratio=3)
        )
    if kind == "clip":  # a full CLIPModel, as openai/clip-* are saved: the text tower is skipped
        return tr.CLIPModel(tr.CLIPConfig(vision_config=vision, text_config=text, projection_dim=48))
    if kind == "clip-vision-projection":
        return tr.CLIPVisionModelWithProjection(tr.CLIPVisionConfig(**vision, projection_dim=40))
    if kind == "siglip":
        return tr.SiglipModel(tr.SiglipConfig(vision_config=vision, text_config=text))
    if kind == "dinov3":
        return tr.DINOv3ViTModel(
            tr.DINOv3ViTConfig(**t, intermediate_size=384, num_register_tokens=4, image_size=64)
        )
    if kind == "dinov3-gated":
        return tr.DINOv3ViTModel(
            tr.DINOv3ViTConfig(
                **t,
                intermediate_size=384,
                num_register_tokens=4,
                image_size=64,
                use_gated_mlp=True,
                hidden_act="silu",
            )
        )
    raise AssertionError(kind)


def hf_outputs(model, kind, x):
    """The pooled output (CLIP: the image embedding), attentions and hidden states of the
    transformers model, eager attention."""
    px = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    kw = dict(output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        if kind in ("clip", "siglip"):
            o = model.vision_model(pixel_values=px, interpolate_pos_encoding=True, **kw)
            out = model.visual_projection(o.pooler_output) if kind == "clip" else o.pooler_output
        elif kind == "clip-vision-projection":
            o = model(pixel_values=px, interpolate_pos_encoding=True, **kw)
            out = o.image_embeds
        else:
            o = model(pixel_values=px, **kw)
            out = o.pooler_output
    return {
        "output": out.numpy(),
        "attention": [a.numpy() for a in o.attentions],
        "hidden": [h.numpy() for h in o.hidden_states],
    }


HF_KINDS = {
    # kind: (family, act, pos_interp, vitops output)
    "dinov2": ("dinov2", "gelu", "hf", "features"),
    "dinov2-swiglu": ("dinov2", "silu", "hf", "features"),
    "dinov2-registers": ("dinov2", "gelu", "timm", "features"),
    "clip": ("clip", "quick_gelu", "hf", "embedding"),
    "clip-vision-projection": ("clip", "quick_gelu", "hf", "embedding"),
    "siglip": ("siglip", "gelu_tanh", "hf", "features"),
    "dinov3": ("dinov3", "gelu", "timm", "features"),
    "dinov3-gated": ("dinov3", "silu", "timm", "features"),
}


@pytest.mark.parametrize("kind", list(HF_KINDS))
def test_hugging_face_families_match_transformers(tmp_path, kind):
    model = hf_model(kind)
    model.set_attn_implementation("eager")
    randomize_(model, seed=3).eval()
    model.save_pretrained(tmp_path / "hf")
    config = vitops.convert(tmp_path / "hf", tmp_path / "m.safetensors")
    family, act, interp, key = HF_KINDS[kind]
    assert (config.family, config.act, config.pos_interp) == (family, act, interp)
    ours = vitops.load(tmp_path / "m.safetensors")
    # The reference is transformers' model run in float64 on the same float32 input: its own
    # float32 attention was up to 8.5e-7 from that (DINOv3), so two float32 runs can differ by
    # more than 1e-6 while each is within 6e-7 of the exact value.
    exact = model.double()
    p = config.patch_size
    for size in (config.image_size, (config.image_size[0] + 2 * p, config.image_size[1] - p)):
        x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
        within(compare(ours, hf_outputs(exact, kind, x.astype(np.float64)), x, key))


def test_hugging_face_config_that_contradicts_the_weights_is_named(tmp_path):
    import json

    model = randomize_(hf_model("dinov2-registers"), seed=1)
    model.save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "num_register_tokens": 2}))
    with pytest.raises(ConversionError, match=r"num_register_tokens 2 \(the tensors say 4\)"):
        vitops.convert(tmp_path / "hf", tmp_path / "o.safetensors")
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    with pytest.raises(ConversionError, match="hidden_act 'relu'"):
        vitops.convert(tmp_path / "hf", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


# ---- the authors' release files, checked through timm's own loader of each layout ----


def release_of(ref, layout):
    """The state dict of a random timm model written in an author's release layout: the
    inverse of timm's checkpoint filter for it (the test checks that timm reads it back)."""
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    out = {}
    if layout == "dinov2":
        out["mask_token"] = torch.randn(1, sd["cls_token"].shape[-1])
        if "reg_token" in sd:  # the release adds the class position before the registers
            pos = torch.randn(1, 1, sd["pos_embed"].shape[-1])
            out["register_tokens"] = sd.pop("reg_token")
            out["cls_token"] = sd.pop("cls_token") - pos
            out["pos_embed"] = torch.cat([pos, sd.pop("pos_embed")], 1)
        packed = sd["blocks.0.mlp.fc1.weight"].shape[0] == 2 * sd["blocks.0.mlp.fc2.weight"].shape[1]
        for k, v in sd.items():  # ViT-g's SwiGLU: w12 ([gate | value]) and w3
            out[k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.") if packed else k] = v
    elif layout == "dinov3":
        d = sd["cls_token"].shape[-1]
        out.update(
            mask_token=torch.randn(1, d),
            storage_tokens=sd.pop("reg_token"),
            **{"rope_embed.periods": torch.rand(64 // 4)},  # per head width 64; recomputed, not read
            **{"local_cls_norm.weight": torch.randn(d), "local_cls_norm.bias": torch.randn(d)},
        )
        for k, v in sd.items():
            k = k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
            k = (
                k.replace("mlp.fc1_g.", "mlp.w1.")
                .replace("mlp.fc1_x.", "mlp.w2.")
                .replace("mlp.fc2.", "mlp.w3.")
            )
            if k.endswith("attn.q_bias"):
                b = k.removesuffix("q_bias")
                garbage = torch.randn(d)  # the release masks the stored key bias out
                out[b + "qkv.bias"] = torch.cat([v, garbage, sd[b + "v_bias"]])
                out[b + "qkv.bias_mask"] = torch.cat([torch.ones(d), torch.zeros(d), torch.ones(d)])
            elif not k.endswith("attn.v_bias"):
                out[k] = v
    elif layout == "openclip":
        out["input_resolution"] = torch.tensor(224)  # OpenAI's state dicts carry these integers
        out["logit_scale"] = torch.tensor(4.6)
        out["token_embedding.weight"] = torch.randn(10, 8)
        out["visual.class_embedding"] = sd.pop("cls_token").reshape(-1)
        out["visual.positional_embedding"] = sd.pop("pos_embed")[0]
        out["visual.proj"] = sd.pop("head.weight").T.contiguous()
        sd.pop("head.bias")
        names = (
            ("patch_embed.proj", "conv1"),
            ("norm_pre", "ln_pre"),
            ("blocks.", "transformer.resblocks."),
            ("norm1", "ln_1"),
            ("norm2", "ln_2"),
            ("attn.qkv.", "attn.in_proj_"),
            ("attn.proj", "attn.out_proj"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        )
        for k, v in sd.items():
            k = "ln_post" + k[4:] if k.startswith("norm.") else k
            for a, b in names:
                k = k.replace(a, b)
            out["visual." + k] = v
    return out


def timm_reads(ref, release, name, **kwargs):
    """timm's own loader of the release layout gives back the model's state dict."""
    if "dinov3" in name:
        from timm.models.eva import checkpoint_filter_fn
    else:
        from timm.models.vision_transformer import checkpoint_filter_fn
    back = checkpoint_filter_fn({k: v.clone() for k, v in release.items()}, ref)
    sd = ref.state_dict()
    assert set(back) == set(sd), set(back) ^ set(sd)
    for k in sd:
        assert torch.allclose(back[k].float(), sd[k].float(), atol=1e-6), k


RELEASES = [
    ("vit_small_patch14_dinov2", dict(img_size=56), "dinov2", "dino"),
    ("vit_small_patch14_reg4_dinov2", dict(img_size=56), "dinov2", "timm"),
    (
        "vit_giant_patch14_dinov2",
        dict(img_size=42, mlp_ratio=2.66667 * 2, act_layer=torch.nn.SiLU, mlp_layer=timm.layers.SwiGLUPacked),
        "dinov2",
        "dino",
    ),
    ("vit_small_patch16_dinov3_qkvb", dict(img_size=64, global_pool="token"), "dinov3", "timm"),
    ("vit_small_plus_patch16_dinov3", dict(img_size=64, global_pool="token"), "dinov3", "timm"),
    ("vit_base_patch16_clip_quickgelu_224", dict(img_size=64, num_classes=48), "openclip", "timm"),
]


@pytest.mark.parametrize("name,kwargs,layout,interp", RELEASES, ids=[f"{c[2]}-{c[0]}" for c in RELEASES])
def test_release_files_match_timm(tmp_path, name, kwargs, layout, interp):
    ref = make_timm(name, seed=4, **{**SMALL, **kwargs})
    if layout == "openclip":
        projection_head(ref)
    release = release_of(ref, layout)
    if layout != "openclip":  # timm's OpenAI reader wants the text tower's keys gone first
        timm_reads(ref, release, name)
    torch.save(release, tmp_path / "release.pth")
    config = vitops.convert(tmp_path / "release.pth", tmp_path / "m.safetensors")
    assert config.pos_interp == interp
    if layout == "openclip":
        assert (config.act, config.proj_dim) == ("quick_gelu", 48)  # OpenAI's: input_resolution
    key = "embedding" if config.proj_dim else "features"
    x = np.random.default_rng(0).standard_normal((2, *config.image_size, 3)).astype(np.float32)
    within(compare(vitops.load(tmp_path / "m.safetensors"), timm_outputs(ref, x), x, key))


def test_openclip_without_its_activation_and_torchscript_are_clear_errors(tmp_path):
    ref = projection_head(
        make_timm("vit_base_patch16_clip_224", seed=5, **SMALL, img_size=32, num_classes=16)
    )
    release = {k: v for k, v in release_of(ref, "openclip").items() if k != "input_resolution"}
    torch.save(release, tmp_path / "open_clip.pth")
    with pytest.raises(ConversionError, match="act='quick_gelu'.*act='gelu'"):
        vitops.convert(tmp_path / "open_clip.pth", tmp_path / "o.safetensors")
    assert vitops.convert(tmp_path / "open_clip.pth", tmp_path / "o.safetensors", act="gelu").act == "gelu"
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    within(compare(vitops.load(tmp_path / "o.safetensors"), timm_outputs(ref, x), x, "embedding"))
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), str(tmp_path / "ViT-B-16.pt"))
    with pytest.raises(ConversionError, match="TorchScript archive"):
        vitops.convert(tmp_path / "ViT-B-16.pt", tmp_path / "p.safetensors")
    assert not os.path.exists(tmp_path / "p.safetensors")


# ---- the registry's entries for these families, at their real sizes ----


@pytest.mark.parametrize(
    "entry,timm_name,kwargs",
    [
        ("dinov2_vits14", "vit_small_patch14_dinov2", {}),
        ("dinov2_vits14_reg4", "vit_small_patch14_reg4_dinov2", {}),
        ("deit3_small_patch16_224", "deit3_small_patch16_224", {}),
        ("dinov3_vits16", "vit_small_patch16_dinov3", dict(global_pool="token")),
        ("siglip_vitb16_webli", "vit_base_patch16_siglip_224", {}),
        ("clip_vitb16_openai", "vit_base_patch16_clip_quickgelu_224", dict(num_classes=512)),
    ],
)
def test_registry_entries_convert_their_source_layout(tmp_path, monkeypatch, entry, timm_name, kwargs):
    """Each entry's arch, format and preprocessing, on a random checkpoint of its source's layout
    (the download itself is tested in test_hub): the converted model matches timm."""
    from vitops import hub
    from vitops.preprocess import Preprocessing

    monkeypatch.delenv("VITOPS_REGISTRY", raising=False)
    e = hub.registry()[entry]
    ref = make_timm(timm_name, seed=6, **kwargs)
    if e["format"] == "timm":
        save_state_dict(ref, tmp_path / "src.safetensors")
        src = tmp_path / "src.safetensors"
    else:
        if e["format"] == "openclip":
            projection_head(ref)
        if e["format"] == "deit":  # DeiT III's models_v2.py names LayerScale gamma_1, gamma_2
            names = {
                k: k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2") for k in ref.state_dict()
            }
            layout = {"model": {names[k]: v for k, v in ref.state_dict().items()}}
        else:
            layout = release_of(ref, e["format"])
        layout.pop("input_resolution", None)  # open_clip's state dicts do not carry it
        src = tmp_path / "src.pth"
        torch.save(layout, src)
    config = vitops.convert(
        src, tmp_path / "m.safetensors", arch=e["arch"], format=e["format"], preprocessing=e["preprocessing"]
    )
    if e["format"] == "openclip":  # OpenAI's CLIP: QuickGELU and a 512-wide projection, no head
        assert (config.act, config.proj_dim, config.num_classes) == ("quick_gelu", 512, 0)
    model = vitops.load(tmp_path / "m.safetensors")
    assert Preprocessing.for_model(config, model.metadata) == Preprocessing.for_family(
        config.family, config.image_size
    )
    key = "embedding" if config.proj_dim else "logits" if config.num_classes else "features"
    x = np.random.default_rng(0).standard_normal((1, *config.image_size, 3)).astype(np.float32)
    out, att, _ = compare(model, timm_outputs(ref, x), x, key)
    assert out < 1e-5 and att < 1e-6, (out, att)


# ---- analyses that know registers and class-free models ----


def test_attention_mass_against_float64_numpy():
    from vitops.analysis import attention_mass

    rng = np.random.default_rng(7)
    logits = rng.standard_normal((2, 3, 9, 12))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)  # (B, H, Q, T)
    got = to_np(attention_mass(probs.astype(np.float32), 1, 4))
    received = probs.mean(axis=2)
    want = np.stack([received[..., :1].sum(-1), received[..., 1:5].sum(-1), received[..., 5:].sum(-1)], -1)
    assert np.abs(got - want).max() < 1e-6
    assert np.allclose(got.sum(-1), 1.0, atol=1e-6)


@pytest.fixture(scope="module")
def register_and_pool_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("families")
    files = {}
    for name, kwargs in (
        ("vit_small_patch14_reg4_dinov2", dict(img_size=56)),
        ("vit_base_patch16_siglip_224", dict(img_size=64)),
    ):
        ref = make_timm(name, seed=8, **{**SMALL, **kwargs})
        save_state_dict(ref, folder / f"{name}.timm.safetensors")
        vitops.convert(folder / f"{name}.timm.safetensors", folder / f"{name}.safetensors")
        files[name] = folder / f"{name}.safetensors"
    return files


def test_token_mass_in_the_forward_pass_equals_the_maps(register_and_pool_models):
    from vitops.analysis import Reductions, attention_mass

    model = vitops.load(register_and_pool_models["vit_small_patch14_reg4_dinov2"])
    x = np.random.default_rng(3).standard_normal((2, 56, 42, 3)).astype(np.float32)
    out = model.infer(x, return_attention=True, reductions=Reductions(token_mass=True, rollout="cls"))
    got = to_np(out["reductions"]["token_mass"])  # (B, L, 3)
    want = np.stack([to_np(attention_mass(a, 1, 4)).mean(axis=1) for a in out["attention"]], axis=1)
    assert got.shape == (2, 2, 3) and np.abs(got - want).max() < 1e-6
    assert (got[..., 1] > 0.01).all()  # random registers do receive attention
    assert to_np(out["reductions"]["rollout"]).shape == (2, 4 * 3)  # the patches only


def test_analyze_a_registers_model_and_a_siglip_tower(register_and_pool_models, tmp_path):
    """The report of DINOv2 with registers and SigLIP: maps over the patches only, the registers'
    share of attention, and the pooling query standing in for SigLIP's missing class token."""
    import json

    from vitops.app.commands import analyze
    from vitops.hub.shipped import samples

    dinov2, siglip = register_and_pool_models.values()
    summary = analyze(
        [str(dinov2), str(siglip)], [str(p) for p in samples()[:5]], tmp_path / "out", show=2, progress=False
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    page = (tmp_path / "out" / "report.html").read_text()
    assert "token_mass.png" in summary["figures"]
    for label, grid, registers, query in (
        ("vit_small_patch14_reg4_dinov2", (4, 4), 4, "class token"),
        ("vit_base_patch16_siglip_224", (4, 4), 0, "attention-pool query (no class token)"),
    ):
        m = next(v for k, v in metrics["models"].items() if k.startswith(label))
        assert np.shape(m["rollout"]["mean"]) == grid
        sample = next(iter(m["samples"].values()))
        assert np.shape(sample["rollout"]) == grid and np.shape(sample["cls_attention"]) == (2, *grid)
        assert m["tokens"] == {"class": int(registers > 0), "registers": registers, "patches": 16}
        assert m["query"] == query
        mass = np.asarray(m["token_mass"]["mean"])  # (L, 3)
        assert mass.shape == (2, 3) and np.allclose(mass.sum(-1), 1.0, atol=1e-5)
        assert (mass[:, 1] > 0.01).all() if registers else (mass[:, :2] == 0).all()
    assert "The registers receive" in page and "attention-pool head's query stands in" in page


def test_pool_query_rollout_kept_factors_equal_the_joint_product(register_and_pool_models):
    """SigLIP's rollout row: the pool query's fused row times every block's factor, whether the
    factors are kept to the end or the joint product is carried forward."""
    from vitops.analysis import Reductions

    model = vitops.load(register_and_pool_models["vit_base_patch16_siglip_224"])
    x = np.random.default_rng(4).standard_normal((3, 48, 64, 3)).astype(np.float32)
    kept = to_np(model.infer(x, reductions=Reductions(rollout="cls"))["reductions"]["rollout"])
    joint = to_np(model.infer(x, reductions=Reductions(rollout="cls", memory=0))["reductions"]["rollout"])
    assert kept.shape == (3, 12) and np.allclose(kept.sum(-1), 1.0, atol=1e-5)
    assert np.abs(kept - joint).max() < 1e-6
