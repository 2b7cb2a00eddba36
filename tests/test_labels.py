"""Class names and preprocessing travel with the weights: recorded at conversion from the
registry, Hugging Face's files, timm's pretrained configs, ImageNet-1k's names or --labels,
and read back by `read_labels` and `Preprocessing.for_model`."""

import hashlib
import io
import json

import cv2
import numpy as np
import pytest
from helpers.timm_reference import TINY, make_timm, randomize_, save_state_dict

import vitops
from vitops import hub
from vitops.app.cli import build_parser, main
from vitops.converters import ConversionError
from vitops.hub import shipped
from vitops.io.weight_file import read_labels
from vitops.preprocess import (
    DEFAULT_CROP_PCT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    denormalize,
    normalize,
    prepare,
    preprocess,
    resize_and_crop,
)

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")


def metadata(path):
    with vitops.WeightFile(path) as f:
        return f.config, dict(f.metadata)


# ---- the registry's preprocessing, through a download ----


@pytest.fixture
def registry_with_full_crop(tmp_path, monkeypatch, file_server):
    url, files = file_server
    buf = io.BytesIO()
    torch.save({"model": make_timm("deit_tiny_patch16_224", **TINY, num_classes=3).state_dict()}, buf)
    files["deit.pth"] = buf.getvalue()
    pre = {
        "size": 64,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    entry = {
        "name": "tiny",
        "family": "deit",
        "format": "deit",
        "preprocessing": pre,
        "sha256": hashlib.sha256(files["deit.pth"]).hexdigest(),
        "source": {"url": f"{url}/files/deit.pth"},
    }
    (tmp_path / "registry.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("VITOPS_REGISTRY", str(tmp_path / "registry.json"))
    monkeypatch.setenv("VITOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VITOPS_NO_PROGRESS", "1")


def test_registry_preprocessing_is_recorded_and_used(registry_with_full_crop):
    config, meta = metadata(hub.fetch("tiny"))
    assert json.loads(meta["preprocessing"])["crop_pct"] == 1.0
    p = Preprocessing.for_model(config, meta)
    assert (p.crop_pct, p.interpolation, p.size) == (1.0, "bilinear", (64, 64))
    # a wide photo keeps its whole height: crop 1.0, not the family's 0.875
    photo = np.random.default_rng(0).integers(0, 256, (90, 160, 3), np.uint8)
    x = prepare(photo, p)
    expected = resize_and_crop(photo, 64, 1.0, "bilinear").astype(np.float32) / 255
    np.testing.assert_allclose(
        x, (expected - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD), atol=1e-5
    )
    assert not np.allclose(x, prepare(photo, p.replace(crop_pct=DEFAULT_CROP_PCT)), atol=1e-3)


def test_family_defaults_are_the_registrys(monkeypatch):
    monkeypatch.delenv("VITOPS_REGISTRY", raising=False)
    for name, e in hub.registry().items():
        config = vitops.get_config(e["arch"])
        assert Preprocessing.for_family(config.family, config.image_size) == Preprocessing.from_mapping(
            e["preprocessing"]
        ), name
    assert Preprocessing.for_family("vit", 224).crop_pct == 0.9  # timm's, not 0.875
    assert Preprocessing.for_family("deit", 384).crop_pct == 1.0


# ---- class names ----


def test_timm_imagenet_1k_checkpoint_carries_imagenet_names(tmp_path):
    save_state_dict(make_timm("vit_small_patch16_224", **TINY, num_classes=1000), tmp_path / "ck.safetensors")
    vitops.convert(tmp_path / "ck.safetensors", tmp_path / "m.safetensors")
    labels = read_labels(metadata(tmp_path / "m.safetensors")[1])
    assert len(labels) == 1000
    assert labels[0] == "tench, Tinca tinca" and labels[999] == "toilet tissue, toilet paper, bathroom tissue"
    assert vitops.load(tmp_path / "m.safetensors").metadata["labels"].startswith('["tench, Tinca tinca", ')


def test_imagenet_21k_names_come_from_timm_when_installed(tmp_path):
    save_state_dict(
        make_timm("vit_small_patch16_224", **TINY, num_classes=21843), tmp_path / "ck.safetensors"
    )
    vitops.convert(tmp_path / "ck.safetensors", tmp_path / "m.safetensors")
    labels = vitops.WeightFile(tmp_path / "m.safetensors").labels
    assert len(labels) == 21843 and labels[0] == "organism, being"  # WordNet's n00004475


def test_hugging_face_id2label_is_carried(tmp_path):
    import transformers

    names = ["cat, domestic", "dog", "ünïcode", 'a "quoted" name']
    config = transformers.ViTConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=192,
        image_size=32,
        patch_size=16,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    randomize_(transformers.ViTForImageClassification(config).eval()).save_pretrained(tmp_path / "hf")
    vitops.convert(tmp_path / "hf", tmp_path / "m.safetensors")
    assert read_labels(metadata(tmp_path / "m.safetensors")[1]) == names
    # transformers' placeholder names are no names
    config.id2label = {i: f"LABEL_{i}" for i in range(4)}
    randomize_(transformers.ViTForImageClassification(config).eval()).save_pretrained(tmp_path / "plain")
    vitops.convert(tmp_path / "plain", tmp_path / "p.safetensors")
    assert "labels" not in metadata(tmp_path / "p.safetensors")[1]


def test_labels_file_and_its_count(tmp_path, capsys):
    save_state_dict(make_timm("vit_small_patch16_224", **TINY, num_classes=3), tmp_path / "ck.safetensors")
    (tmp_path / "three.txt").write_text("zero, nil\none\ntwo\n")
    (tmp_path / "two.txt").write_text("zero\none\n")
    assert (
        main(
            [
                "convert",
                str(tmp_path / "ck.safetensors"),
                str(tmp_path / "m.safetensors"),
                "--labels",
                str(tmp_path / "three.txt"),
            ]
        )
        == 0
    )
    assert vitops.WeightFile(tmp_path / "m.safetensors").labels == ["zero, nil", "one", "two"]
    with pytest.raises(ConversionError, match="2 class names for a head of 3 classes"):
        vitops.convert(tmp_path / "ck.safetensors", tmp_path / "n.safetensors", labels=tmp_path / "two.txt")
    assert not (tmp_path / "n.safetensors").exists()
    vitops.convert(tmp_path / "ck.safetensors", tmp_path / "l.safetensors", labels=["a", "b", "c"])
    assert vitops.WeightFile(tmp_path / "l.safetensors").labels == ["a", "b", "c"]


def test_read_labels_formats_and_errors(tmp_path):
    assert read_labels({"labels": json.dumps(["tench, Tinca tinca", "b"])}) == ["tench, Tinca tinca", "b"]
    assert read_labels({}) is None
    # A comma-separated string is not the format (no vitops file ever shipped one): refused, and
    # so is a long one, which once skipped the length cap.
    for bad in (
        "[1, 2]",
        "[" * 5000,
        '["a"',
        json.dumps(["x" * 5000]),
        "0,1,2",
        ",".join(["y" * 200_000] * 10),
    ):
        with pytest.raises(vitops.WeightFileError, match="metadata labels"):
            read_labels({"labels": bad})
    assert vitops.load("digits_vit").config.num_classes == len(
        read_labels(vitops.load("digits_vit").metadata)
    )


def test_a_file_with_the_wrong_number_of_labels_is_refused(tmp_path):
    params, config = vitops.load_params(shipped.model_path("digits_vit"))
    with pytest.raises(vitops.WeightFileError, match="3 labels for 10 classes"):
        vitops.save(tmp_path / "m.safetensors", params, config, labels=["a", "b", "c"])
    from safetensors.numpy import load_file, save_file

    meta = metadata(shipped.model_path("digits_vit"))[1]
    save_file(
        load_file(str(shipped.model_path("digits_vit"))),
        str(tmp_path / "x.safetensors"),
        metadata=dict(meta, labels=json.dumps(["a"] * 3)),
    )
    with pytest.raises(vitops.WeightFileError, match="x.safetensors: bad metadata: 3 labels for 10 classes"):
        vitops.load(tmp_path / "x.safetensors")


# ---- preprocessing from the checkpoint's own files ----


def test_timm_pretrained_config_is_recorded(tmp_path):
    # timm evaluates DeiT at crop 0.9 (its config), not the family default 0.875
    save_state_dict(make_timm("deit_tiny_patch16_224", num_classes=1000), tmp_path / "ck.safetensors")
    vitops.convert(
        tmp_path / "ck.safetensors", tmp_path / "m.safetensors", arch="deit_tiny_patch16_224.fb_in1k"
    )
    config, meta = metadata(tmp_path / "m.safetensors")
    p = Preprocessing.for_model(config, meta)
    assert (p.crop_pct, p.interpolation, p.mean, p.size) == (0.9, "bicubic", IMAGENET_MEAN, (224, 224))
    vitops.convert(tmp_path / "ck.safetensors", tmp_path / "n.safetensors", arch="deit_tiny_patch16_224")
    assert "preprocessing" not in metadata(tmp_path / "n.safetensors")[1]  # no tag: nothing to look up


@pytest.mark.parametrize(
    "processor,expected",
    [
        (
            {"size": 32, "resample": 2, "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
            dict(size=(32, 32), crop_pct=1.0, interpolation="bilinear", mean=(0.5,) * 3),
        ),
        (
            {
                "size": {"shortest_edge": 40},
                "crop_size": {"height": 32, "width": 32},
                "do_center_crop": True,
                "resample": 3,
                "image_mean": list(IMAGENET_MEAN),
                "image_std": list(IMAGENET_STD),
            },
            dict(size=(32, 32), crop_pct=0.8, interpolation="bicubic", mean=IMAGENET_MEAN),
        ),
        (
            {"size": {"height": 32, "width": 32}, "crop_pct": 0.95, "image_mean": 0.5, "image_std": 0.5},
            dict(size=(32, 32), crop_pct=0.95, interpolation="bicubic", mean=(0.5,) * 3),
        ),
    ],
)
def test_hugging_face_preprocessor_config_is_recorded(tmp_path, processor, expected):
    import transformers

    config = transformers.ViTConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=192,
        image_size=32,
        patch_size=16,
        num_labels=2,
    )
    randomize_(transformers.ViTForImageClassification(config).eval()).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(processor))
    vitops.convert(tmp_path / "hf", tmp_path / "m.safetensors")
    p = Preprocessing.for_model(*metadata(tmp_path / "m.safetensors"))
    assert {k: getattr(p, k) for k in expected} == expected


@pytest.mark.parametrize(
    "processor,match",
    [
        ({"resample": 1}, "resample 1 \\(lanczos\\)"),
        ({"image_std": [0, 0, 0]}, "std must be"),
        ({"crop_pct": 0}, "crop_pct must be"),
        ({"size": "big"}, "is not a size"),
        ({"size": 40}, "not a multiple of the patch size 16"),
        ({"image_mean": "x"}, "image_mean"),
        ({"do_center_crop": "yes"}, "do_center_crop"),
    ],
)
def test_bad_preprocessor_config_names_the_file(tmp_path, processor, match):
    import transformers

    config = transformers.ViTConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=192,
        image_size=32,
        patch_size=16,
        num_labels=2,
    )
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ConversionError, match=match) as info:
        vitops.convert(tmp_path / "hf", tmp_path / "m.safetensors")
    assert "preprocessor_config.json" in str(info.value) or "patch size" in str(info.value)
    assert not (tmp_path / "m.safetensors").exists()


# ---- the pipeline's API ----


def test_decode_once_prepare_for_several_models(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (70, 90, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), image[..., ::-1])
    vit, deit = Preprocessing.for_family("vit", 32), Preprocessing.for_family("deit", (48, 64))
    rgb = vitops.preprocess.read_image(tmp_path / "x.png")
    a, b = prepare(rgb, vit), prepare(rgb, deit)
    assert a.shape == (32, 32, 3) and b.shape == (48, 64, 3) and a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(preprocess([tmp_path / "x.png"], preprocessing=deit)[0], b)
    # the old keywords still work, crop_pct defaulting to the family's
    old = preprocess([tmp_path / "x.png"], size=32, family="vit")[0]
    np.testing.assert_array_equal(old, a)
    np.testing.assert_allclose(
        denormalize(b, deit), resize_and_crop(image, (48, 64), deit.crop_pct) / 255, atol=1e-6
    )
    np.testing.assert_allclose(
        normalize(image, deit), (image / 255 - IMAGENET_MEAN) / IMAGENET_STD, atol=1e-5
    )


def test_digits_models_keep_their_recorded_crop():
    model = vitops.load("digits_vit")
    assert (
        Preprocessing.for_model(model.config, model.metadata).crop_pct == 1.0
    )  # recorded, not the family's 0.9


def test_convert_choices_come_from_the_shared_constants(monkeypatch):
    import sys

    convert_module = sys.modules["vitops.converters"]
    monkeypatch.setattr(convert_module, "FORMATS", convert_module.FORMATS + ("newformat",))
    monkeypatch.setattr(sys.modules["vitops.converters.releases"], "WHICH", ("teacher", "student", "ema"))
    args = build_parser().parse_args(["convert", "a", "b", "--format", "newformat", "--which", "ema"])
    assert (args.format, args.which) == ("newformat", "ema")
