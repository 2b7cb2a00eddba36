"""Bad Hugging Face folders: every problem of config.json or preprocessor_config.json is a
ConversionError naming the file, found before any tensor is read, and nothing is written."""

import json
import shutil
import time

import pytest
from helpers.timm_reference import randomize_

import vitops
from vitops.converters import ConversionError


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    import transformers

    config = transformers.ViTConfig(
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=192,
        image_size=32,
        patch_size=16,
        num_labels=3,
    )
    folder = tmp_path_factory.mktemp("hf") / "vit"
    randomize_(transformers.ViTForImageClassification(config).eval()).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"size": 32, "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "resample": 2})
    )
    return folder


def edited(src, dst, name, change):
    shutil.copytree(src, dst)
    path = dst / name
    if isinstance(change, str):
        path.write_text(change)
    else:
        d = json.loads(path.read_text())
        d.update(change)
        path.write_text(json.dumps(d))
    return dst


@pytest.mark.parametrize(
    "name,change,match",
    [
        ("config.json", "[1, 2, 3]", "expected an object at the top level"),  # was AttributeError
        ("config.json", "[" * 10_000 + "]" * 10_000, "nested too deeply"),  # was RecursionError
        ("config.json", '{"hidden_size": 1e999}', "out of the float range"),
        ("config.json", {"hidden_size": "128"}, "hidden_size must be an integer"),  # was TypeError
        ("config.json", {"hidden_size": 128.0}, "hidden_size must be an integer"),
        ("config.json", {"patch_size": 0}, "patch_size must be in"),  # was ZeroDivisionError
        ("config.json", {"num_hidden_layers": 10**9}, "num_hidden_layers must be in"),  # was gigabytes
        (
            "config.json",
            {"num_attention_heads": 3},
            "hidden_size 128 is not divisible by num_attention_heads 3",
        ),
        ("config.json", {"layer_norm_eps": -1e-12}, "layer_norm_eps must be in"),  # converted, then NaN
        ("config.json", {"layer_norm_eps": "tiny"}, "layer_norm_eps must be a number"),
        ("config.json", {"image_size": [32, 32, 3]}, "image_size must be an integer or"),
        ("config.json", {"model_type": ["vit"]}, "model_type \\['vit'\\] is not one vitops converts"),
        ("config.json", {"qkv_bias": "yes"}, "qkv_bias must be true or false, got 'yes'"),
        ("config.json", {"qkv_bias": False}, "qkv_bias=false is not supported"),
        ("config.json", {"hidden_act": "relu"}, "hidden_act 'relu' is not one vitops implements"),
        (
            "config.json",
            {"model_type": "siglip_vision_model"},
            "the tensors are not of one: class_token True",
        ),
        ("config.json", {"num_channels": 1}, "num_channels 1"),
        ("config.json", {"id2label": {"0": "a", "1": "b"}}, "2 class names for a head of 3 classes"),
        ("config.json", {"id2label": {"0": "a", "2": "b", "3": "c"}}, "id2label indices are not 0..2"),
        ("config.json", {"id2label": ["a", "b", "c"]}, "id2label must be an object"),
        ("config.json", {"id2label": {"0": 1, "1": 2, "2": 3}}, "are not strings"),
        ("preprocessor_config.json", "null", "expected an object"),
        (
            "preprocessor_config.json",
            {"image_mean": [0.5, 0.5]},
            "image_mean \\[0.5, 0.5\\] is not 3 numbers",
        ),
        ("preprocessor_config.json", {"image_std": [0, 0, 0]}, "std must be"),  # was ZeroDivision later
        ("preprocessor_config.json", {"crop_pct": 0}, "crop_pct must be"),
        ("preprocessor_config.json", {"size": {"height": -1, "width": 32}}, "size must be"),
    ],
)
def test_bad_hugging_face_files_are_named(tmp_path, hf_folder, name, change, match):
    folder = edited(hf_folder, tmp_path / "hf", name, change)
    start = time.perf_counter()
    with pytest.raises(ConversionError, match=match) as info:
        vitops.convert(folder, tmp_path / "m.safetensors")
    assert time.perf_counter() - start < 5
    assert str(folder / name) in str(info.value)
    assert len(str(info.value)) < 1000
    assert not (tmp_path / "m.safetensors").exists()
