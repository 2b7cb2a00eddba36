import pytest

import vitops
from vitops.core.variants import VARIANTS


def test_variants_cover_the_families():
    for size, dim, heads, patch, res in (
        ("tiny", 192, 3, 16, 384),
        ("small", 384, 6, 32, 224),
        ("base", 768, 12, 8, 224),
        ("large", 1024, 16, 32, 384),
        ("huge", 1280, 16, 14, 224),
    ):
        c = VARIANTS[f"vit_{size}_patch{patch}_{res}"]
        assert (c.dim, c.num_heads, c.patch_size, c.image_size) == (dim, heads, patch, (res, res))
    assert VARIANTS["vit_large_patch16_224"].depth == 24
    for size in ("tiny", "small", "base"):
        assert VARIANTS[f"deit_{size}_distilled_patch16_224"].num_tokens == 198
    assert VARIANTS["deit_base_patch16_384"].num_tokens == 577
    for name, patch in (("dino_vits16", 16), ("dino_vits8", 8), ("dino_vitb16", 16), ("dino_vitb8", 8)):
        c = VARIANTS[name]
        assert c.num_classes == 0 and c.family == "dino" and c.patch_size == patch


def test_timm_names_with_tags():
    assert vitops.get_config("vit_base_patch16_224.augreg_in21k_ft_in1k").name == "vit_base_patch16_224"
    assert vitops.get_config("vit_base_patch8_224.dino").name == "dino_vitb8"
    with pytest.raises(vitops.ConfigError, match="unknown architecture"):
        vitops.get_config("vit_gigantic_patch3_999")


def test_json_round_trip_and_validation():
    c = VARIANTS["deit_base_distilled_patch16_384"]
    assert vitops.ViTConfig.from_json(c.to_json()) == c
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        vitops.ViTConfig(image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        vitops.ViTConfig(dim=100, num_heads=3)
    with pytest.raises(ValueError, match="pos_interp"):
        vitops.ViTConfig(pos_interp="bilinear")


def test_every_variant_is_a_released_checkpoint():
    """The table lists only architectures that a release has (timm's pretrained tags, which
    include the DeiT and DINO releases): a name no checkpoint uses is not offered."""
    timm = pytest.importorskip("timm")
    released = {n.split(".")[0] for n in timm.list_pretrained()}
    dino = {
        "dino_vits16": "vit_small_patch16_224.dino",
        "dino_vits8": "vit_small_patch8_224.dino",
        "dino_vitb16": "vit_base_patch16_224.dino",
        "dino_vitb8": "vit_base_patch8_224.dino",
    }
    for name in VARIANTS:
        tag = dino.get(name)
        assert tag in timm.list_pretrained() if tag else name in released, name
    assert "vit_small_patch8_224" not in VARIANTS and "vit_huge_patch32_384" not in VARIANTS
