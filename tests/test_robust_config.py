"""One validation of a config for every path in: Python callers, weight-file metadata,
Hugging Face config.json, --arch names. Hostile values end as ConfigError (or the file's own
error naming the file), quickly, with short messages."""

import json

import numpy as np
import pytest
from helpers.memory import allocations
from safetensors.numpy import load_file, save_file

import vitops
from vitops.core.config import LIMITS, MAX_PATCHES, ViTConfig
from vitops.core.variants import VARIANTS, get_config
from vitops.errors import ConfigError, capped, clip


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(patch_size=0), "patch_size must be in"),  # was ZeroDivisionError
        (dict(image_size=float("inf")), "image_size must be an integer"),  # was OverflowError
        (dict(depth=4.0), "depth must be an integer"),
        (dict(dim=64.0, num_heads=1), "dim must be an integer"),  # was a Keras shape error later
        (dict(name=5), "name must be a string"),  # was TypeError
        (dict(image_size=-32), "sides must be in"),  # loaded, failed later
        (dict(layer_norm_eps="1e-6"), "layer_norm_eps must be a number"),
        (dict(layer_norm_eps=-1e-6), "layer_norm_eps must be in"),  # loaded, gave NaN
        (dict(layer_norm_eps=float("nan")), "layer_norm_eps must be in"),
        (dict(depth=True), "depth must be an integer"),  # bool is not an int here
        (dict(distilled=1), "distilled must be true or false"),
        (dict(depth=1_000_000), "depth must be in"),
        (dict(image_size=(32, 32, 3)), "image_size must be an integer or"),
        (dict(image_size=1024, patch_size=4), "more than 16,384"),
    ],
)
def test_bad_fields_are_config_errors(fields, match):
    with pytest.raises(ConfigError, match=match):
        ViTConfig(**fields)


def test_bounds_admit_every_variant_and_the_largest_real_vits():
    for name, c in VARIANTS.items():
        assert ViTConfig.from_json(c.to_json()) == c, name
    # ViT-H/14 at 518 px (DINOv2), ViT-g/14 and ViT-G/14 (Zhai et al. 2022), ViT-e (PaLI)
    ViTConfig(image_size=518, patch_size=14, dim=1280, depth=32, num_heads=16, mlp_dim=5120)
    ViTConfig(image_size=518, patch_size=14, dim=1408, depth=40, num_heads=16, mlp_dim=6144)
    ViTConfig(
        image_size=224, patch_size=14, dim=1664, depth=48, num_heads=16, mlp_dim=8192, num_classes=21843
    )
    ViTConfig(image_size=224, patch_size=14, dim=1792, depth=56, num_heads=16, mlp_dim=15360)
    with pytest.raises(ConfigError, match="dim must be in"):  # ViT-22B is beyond the bounds
        ViTConfig(image_size=224, patch_size=14, dim=6144, depth=48, num_heads=48, mlp_dim=24576)
    assert LIMITS["depth"][1] >= max(c.depth for c in VARIANTS.values())
    assert max(c.grid_size[0] * c.grid_size[1] for c in VARIANTS.values()) <= MAX_PATCHES


def test_numpy_ints_are_ints_and_come_out_plain():
    c = ViTConfig(
        image_size=np.int64(64),
        patch_size=np.int32(16),
        dim=np.int64(128),
        num_heads=2,
        depth=2,
        mlp_dim=256,
        num_classes=np.int64(3),
    )
    assert type(c.dim) is int and c.image_size == (64, 64) and type(c.image_size[0]) is int
    assert json.loads(c.to_json())["dim"] == 128


def test_from_json_refuses_hostile_text():
    for text, match in [
        ("[" * 100_000 + "]" * 100_000, "more than the"),
        ("[" * 2000 + "]" * 2000, "nested"),
        ("[1, 2]", "top level"),
        ('{"depth": 1e999}', "out of the float range"),
        ('{"depth": NaN}', "not a number JSON allows"),
        ('{"dpeth": 12}', "unknown ViTConfig fields"),
        ("not json", "not valid JSON"),
    ]:
        with pytest.raises(ConfigError, match=match):
            ViTConfig.from_json(text)


def test_unknown_arch_is_a_config_error_with_a_short_message():
    for name in ("vit_gigantic_patch3_999", "vit_" + "x" * 100_000):
        with pytest.raises(ConfigError, match="unknown architecture|architecture name") as info:
            get_config(name)
        assert len(str(info.value)) < 500
    with pytest.raises(ConfigError):
        get_config(None)


def test_messages_are_capped():
    assert capped(range(20_000)).endswith("and 19,988 more")
    assert len(clip("x" * 10**6)) < 120 and len(clip(list(range(10**6)))) < 120
    assert clip(10**5000) == "<int>"
    problems = None
    try:
        ViTConfig(name="n" * 10**6)
    except ConfigError as e:
        problems = str(e)
    assert problems and len(problems) < 300


# ---- the same checks on a weight file's metadata ----


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    config = ViTConfig(image_size=32, patch_size=16, dim=64, depth=2, num_heads=2, mlp_dim=96, num_classes=3)
    rng = np.random.default_rng(0)
    params = {
        k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in vitops.param_shapes(config).items()
    }
    path = tmp_path_factory.mktemp("cfg") / "m.safetensors"
    vitops.save(path, params, config)
    return path


def rewrite(src, dst, **changes):
    """src with its metadata's config fields (or top-level metadata keys, prefixed meta_) changed."""
    with vitops.WeightFile(src) as f:
        meta = dict(f.metadata)
    config = json.loads(meta["config"])
    config.update({k: v for k, v in changes.items() if not k.startswith("meta_")})
    meta["config"] = json.dumps(config)
    meta.update({k[5:]: v for k, v in changes.items() if k.startswith("meta_")})
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(patch_size=0), "patch_size must be in"),
        (dict(image_size=[1e308, 1e308]), "image_size must be an integer"),
        (dict(depth=4.0), "depth must be an integer"),
        (dict(name=7), "name must be a string"),
        (dict(dim=64.0), "dim must be an integer"),
        (dict(image_size=-32), "sides must be in"),
        (dict(layer_norm_eps="x"), "layer_norm_eps must be a number"),
        (dict(layer_norm_eps=-1.0), "layer_norm_eps must be in"),
        (dict(meta_format_version="999"), "format_version '999' is not one this vitops reads"),
        (dict(meta_config="[" * 5000 + "]" * 5000), "more than the|nested"),  # was RecursionError
    ],
)
def test_bad_config_in_a_file_names_the_file(tmp_path, small_file, changes, match):
    bad = rewrite(small_file, tmp_path / "bad.safetensors", **changes)
    with pytest.raises(vitops.WeightFileError, match=match) as info:
        vitops.load(bad)
    assert str(bad) in str(info.value)


def test_a_file_claiming_a_million_blocks_fails_fast_and_briefly(tmp_path, small_file):
    for depth in (1_000_000, 10**9):  # was 16 s, 3.2 GB and a 342-million-character message
        bad = rewrite(small_file, tmp_path / f"d{depth}.safetensors", depth=depth)
        with allocations() as peak, pytest.raises(vitops.WeightFileError, match="depth must be in") as info:
            vitops.load(bad)
        assert peak() < 16 << 20  # refused from the number, nothing built for a million blocks
        assert len(str(info.value)) < 400


def test_a_file_whose_tensors_do_not_fit_gets_a_capped_message(tmp_path, small_file):
    bad = rewrite(small_file, tmp_path / "d.safetensors", depth=64)  # 62 blocks' tensors missing
    with pytest.raises(vitops.WeightFileError, match="missing 744 tensor") as info:
        vitops.load(bad)
    assert "and 732 more" in str(info.value) and len(str(info.value)) < 1500
