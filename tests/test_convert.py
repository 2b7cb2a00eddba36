"""timm checkpoints in both file types, architecture inference, and conversion errors."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers.timm_reference import TINY, make_timm, rel_err, save_state_dict, timm_outputs

import vitops
from vitops.app.cli import main
from vitops.converters import ConversionError
from vitops.converters.timm import infer_config

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")

to_np = keras.ops.convert_to_numpy


def test_pth_and_safetensors_convert_identically(tmp_path):
    ref = make_timm("vit_small_patch16_224", **TINY, num_classes=6)
    torch.save(ref.state_dict(), tmp_path / "ck.pth")
    save_state_dict(ref, tmp_path / "ck.safetensors")
    a = vitops.convert(tmp_path / "ck.pth", tmp_path / "a.safetensors")
    b = vitops.convert(tmp_path / "ck.safetensors", tmp_path / "b.safetensors")
    assert a == b
    pa, _ = vitops.load_params(tmp_path / "a.safetensors")
    pb, _ = vitops.load_params(tmp_path / "b.safetensors")
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    y = to_np(vitops.load(tmp_path / "a.safetensors")(images))
    assert rel_err(y, timm_outputs(ref, images)["output"]) <= 1e-4


def test_bfloat16_checkpoint(tmp_path):
    # timm's hub holds some checkpoints in bfloat16, which numpy cannot represent
    from safetensors.torch import save_file

    ref = make_timm("vit_small_patch16_224", **TINY, num_classes=4)
    save_file(
        {k: v.bfloat16().contiguous() for k, v in ref.state_dict().items()},
        str(tmp_path / "bf16.safetensors"),
    )
    vitops.convert(tmp_path / "bf16.safetensors", tmp_path / "m.safetensors")
    params, _ = vitops.load_params(tmp_path / "m.safetensors")
    expected = ref.state_dict()["blocks.0.attn.qkv.weight"].bfloat16().float().numpy().T
    np.testing.assert_array_equal(params["blocks.0.attn.qkv.kernel"], expected)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pth_with_code_is_refused(tmp_path):
    torch.save({"patch_embed.proj.weight": torch.zeros(1), "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="weights_only=True"):
        vitops.convert(tmp_path / "evil.pth", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def _shapes_of(name, num_classes):
    import timm

    with torch.device("meta"):  # shapes only, no memory
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "name,num_classes,expected",
    [
        ("vit_base_patch16_384", 1000, "vit_base_patch16_384"),
        ("vit_large_patch32_224", 21843, "vit_large_patch32_224"),
        ("vit_small_patch8_224", 1000, ""),  # no release has this head: a custom ViT, not a named one
        ("vit_small_patch8_224", 0, "dino_vits8"),
        ("vit_large_patch16_224", 0, "vit_large_patch16_224"),
        ("deit_small_distilled_patch16_224", 1000, "deit_small_distilled_patch16_224"),
        ("vit_base_patch16_224", 0, "dino_vitb16"),
    ],
)
def test_architecture_inferred_from_shapes(name, num_classes, expected):
    sd = _shapes_of(name, num_classes)
    config = infer_config(sd)
    if not expected:  # a custom ViT: Google ViT's preprocessing, no name
        assert (config.name, config.family, config.num_classes) == ("", "vit", num_classes)
        return
    reference = vitops.get_config(expected)
    same = dict(name="", family="vit", num_classes=0)
    assert config.replace(**same) == reference.replace(**same)
    assert config.num_classes == num_classes
    assert config.name == expected
    assert config.family == reference.family


def test_explicit_arch_sets_family_and_is_checked(tmp_path):
    ref = make_timm("deit_small_patch16_224", num_classes=10)
    save_state_dict(ref, tmp_path / "ck.safetensors")
    cfg = vitops.convert(
        tmp_path / "ck.safetensors", tmp_path / "o.safetensors", arch="deit_small_patch16_224.fb_in1k"
    )
    assert (cfg.family, cfg.name, cfg.num_classes) == ("deit", "deit_small_patch16_224", 10)
    with pytest.raises(ConversionError, match="does not match architecture 'vit_base_patch16_224'.*dim"):
        vitops.convert(tmp_path / "ck.safetensors", tmp_path / "p.safetensors", arch="vit_base_patch16_224")
    assert not (tmp_path / "p.safetensors").exists()


def test_unsupported_tensors_are_named(tmp_path):
    # QK-norm (Dehghani et al. 2023) is not part of any family vitops loads
    ref = make_timm("vit_small_patch16_224", **TINY, num_classes=3, qk_norm=True)
    save_state_dict(ref, tmp_path / "ck.safetensors")
    with pytest.raises(
        ConversionError, match=r"blocks\.0\.attn\.k_norm\.bias, blocks\.0\.attn\.k_norm\.weight"
    ):
        vitops.convert(tmp_path / "ck.safetensors", tmp_path / "o.safetensors")


def test_truncated_source_is_a_clear_error(tmp_path):
    ref = make_timm("vit_small_patch16_224", **TINY, num_classes=3)
    save_state_dict(ref, tmp_path / "ck.safetensors")
    data = (tmp_path / "ck.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        vitops.convert(tmp_path / "cut.safetensors", tmp_path / "o.safetensors")
    torch.save(ref.state_dict(), tmp_path / "ck.pth")
    data = (tmp_path / "ck.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="cannot read"):
        vitops.convert(tmp_path / "cut.pth", tmp_path / "o.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["ck.pth", "ck.safetensors", "cut.pth", "cut.safetensors"]


def test_cli_convert_and_models(tmp_path, capsys):
    ref = make_timm("deit_tiny_distilled_patch16_224", **TINY, num_classes=3)
    save_state_dict(ref, tmp_path / "ck.safetensors")
    assert main(["convert", str(tmp_path / "ck.safetensors"), str(tmp_path / "o.safetensors")]) == 0
    assert "deit" in capsys.readouterr().out
    assert vitops.load(tmp_path / "o.safetensors").config.distilled
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.safetensors")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name in ("vit_large_patch32_384", "deit_base_distilled_patch16_384", "dino_vitb8"):
        assert name in listing


def test_console_script_reports_errors(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitops",
            "convert",
            str(tmp_path / "junk.safetensors"),
            str(tmp_path / "o.safetensors"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "truncated or corrupt" in proc.stderr
    assert not (tmp_path / "o.safetensors").exists()
