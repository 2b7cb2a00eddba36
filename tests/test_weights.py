"""The vitops file: round trip, provenance, strict loading, atomic writes."""

import json
import os

import numpy as np
import pytest
from helpers.timm_reference import TINY, make_timm, save_state_dict
from safetensors.numpy import load_file, save_file

import vitops
from vitops.io import weight_file as weights


@pytest.fixture
def converted(tmp_path):
    ref = make_timm("deit_tiny_distilled_patch16_224", **TINY, num_classes=4)
    src, dst = tmp_path / "src.safetensors", tmp_path / "model.safetensors"
    save_state_dict(ref, src)
    vitops.convert(src, dst)
    return src, dst


def test_metadata_holds_config_and_provenance(converted):
    src, dst = converted
    with vitops.WeightFile(dst) as f:
        assert f.metadata["format"] == "vitops"
        assert f.metadata["source_format"] == "timm"
        assert f.metadata["source_sha256"] == weights.sha256_file(src)
        config = f.config
    assert config.distilled and config.num_classes == 4 and config.family == "deit"
    assert config.dim == 128 and config.num_heads == 2 and config.depth == 3
    assert json.loads(config.to_json())["image_size"] == [64, 64]


def test_save_load_round_trip(tmp_path, converted):
    params, config = vitops.load_params(converted[1])
    params = {k: v + np.float32(1.5) for k, v in params.items()}
    vitops.save(tmp_path / "again.safetensors", params, config)
    again, config2 = vitops.load_params(tmp_path / "again.safetensors")
    assert config2 == config
    for k in params:
        np.testing.assert_array_equal(again[k], params[k])


def test_model_weights_are_the_file_tensors(converted):
    model = vitops.load(converted[1])
    raw = load_file(str(converted[1]))
    got = model.get_params()
    assert set(got) == set(raw)
    for k in raw:
        np.testing.assert_array_equal(got[k], raw[k])


def _rewrite(path, tensors, metadata):
    save_file(tensors, str(path), metadata=metadata)


def _metadata(path):
    with vitops.WeightFile(path) as f:
        return f.metadata


def test_every_bad_tensor_named_in_one_error(tmp_path, converted):
    dst = converted[1]
    meta = _metadata(dst)
    tensors = load_file(str(dst))
    tensors["blocks.0.attn.qkv.kernelX"] = tensors.pop("blocks.0.attn.qkv.kernel")
    tensors["norm.scale"] = np.zeros((127,), np.float32)
    del tensors["head_dist.bias"]
    bad = tmp_path / "bad.safetensors"
    _rewrite(bad, tensors, meta)
    with pytest.raises(vitops.WeightFileError) as info:
        vitops.load(bad)
    msg = str(info.value)
    assert "missing 2 tensor(s): blocks.0.attn.qkv.kernel, head_dist.bias" in msg
    assert "unexpected 1 tensor(s): blocks.0.attn.qkv.kernelX" in msg
    assert "norm.scale: expected (128,), found (127,)" in msg


def test_truncated_file_is_a_clear_error(tmp_path, converted):
    data = converted[1].read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 40, 3):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(vitops.WeightFileError, match="truncated or corrupt"):
            vitops.load(bad)


def test_foreign_safetensors_is_told_to_convert(converted):
    with pytest.raises(vitops.WeightFileError, match="not a vitops weight file.*vitops convert"):
        vitops.load(converted[0])


def test_missing_file(tmp_path):
    with pytest.raises(vitops.WeightFileError, match="no such weight file"):
        vitops.load(tmp_path / "nope.safetensors")


def test_saved_file_has_the_usual_permissions(tmp_path, converted):
    params, config = vitops.load_params(converted[1])
    umask = os.umask(0o022)
    try:
        vitops.save(tmp_path / "m.safetensors", params, config)
    finally:
        os.umask(umask)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


def test_save_refuses_params_that_do_not_fit(tmp_path, converted):
    params, config = vitops.load_params(converted[1])
    params.pop("cls_token")
    out = tmp_path / "x.safetensors"
    with pytest.raises(vitops.WeightFileError, match="missing 1 tensor"):
        vitops.save(out, params, config)
    assert not out.exists()


def test_interrupted_save_leaves_nothing(tmp_path, converted, monkeypatch):
    params, config = vitops.load_params(converted[1])
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()

    def interrupted(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        vitops.save(out, params, config)
    assert os.listdir(out.parent) == []


def test_failed_save_keeps_previous_file(tmp_path, converted, monkeypatch):
    params, config = vitops.load_params(converted[1])
    out = converted[1]  # a vitops file, which a save may replace
    previous = out.read_bytes()

    def broken(tensors, filename, metadata=None):
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_file", broken)
    with pytest.raises(vitops.WeightFileError, match="cannot write .*model.safetensors: disk full"):
        vitops.save(out, params, config)
    assert out.read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "src.safetensors"]


def test_save_never_replaces_a_file_it_did_not_write(tmp_path, converted):
    params, config = vitops.load_params(converted[1])
    for content in (b"my notes", converted[0].read_bytes()):  # any file; a timm checkpoint
        out = tmp_path / "mine.safetensors"
        out.write_bytes(content)
        with pytest.raises(vitops.WeightFileError, match="not a vitops weight file vitops wrote"):
            vitops.save(out, params, config)
        assert out.read_bytes() == content
    link = tmp_path / "link.safetensors"
    link.symlink_to(converted[1])
    before = converted[1].read_bytes()
    with pytest.raises(vitops.WeightFileError, match="symbolic link"):
        vitops.save(link, params, config)
    assert link.is_symlink() and converted[1].read_bytes() == before
