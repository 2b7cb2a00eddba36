"""The weight file's tensors: dtypes checked in the header before any tensor is read, values
checked as they are read; foreign checkpoints with integer tensors or zip bombs refused."""

import io
import json
import zipfile

import numpy as np
import pytest
from helpers.memory import allocations
from helpers.timm_reference import TINY, make_timm
from safetensors.numpy import load_file, save_file

import vitops
from vitops.converters import ConversionError
from vitops.core.config import ViTConfig

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")

CONFIG = ViTConfig(image_size=32, patch_size=16, dim=64, depth=2, num_heads=2, mlp_dim=96, num_classes=3)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    rng = np.random.default_rng(0)
    params = {
        k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in vitops.param_shapes(CONFIG).items()
    }
    path = tmp_path_factory.mktemp("w") / "m.safetensors"
    vitops.save(path, params, CONFIG)
    return path


def _retyped(src, dst, key, dtype):
    """src with tensor `key` stored as `dtype` (same shape), metadata kept."""
    with vitops.WeightFile(src) as f:
        meta = f.metadata
    tensors = load_file(str(src))
    tensors[key] = tensors[key].astype(dtype)
    save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize(
    "dtype,name", [(np.int32, "I32"), (np.uint8, "U8"), (np.bool_, "BOOL"), (np.int64, "I64")]
)
def test_integer_and_bool_tensors_are_refused_by_the_header(tmp_path, small, dtype, name):
    bad = _retyped(small, tmp_path / "bad.safetensors", "norm.scale", dtype)
    with pytest.raises(vitops.WeightFileError, match=rf"floating point.*norm.scale \({name}\)"):
        vitops.load(bad)


def test_a_header_saying_i32_over_float_bytes_is_refused(tmp_path, small):
    # The same bytes, relabelled: the load used to succeed and every output was NaN.
    data = small.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["blocks.0.attn.qkv.kernel"]["dtype"] = "I32"
    text = json.dumps(header).encode()
    (tmp_path / "i32.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])
    with pytest.raises(vitops.WeightFileError, match="floating point"):
        vitops.load(tmp_path / "i32.safetensors")


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_half_precision_files_load_as_float32(tmp_path, small, dtype):
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    half = _retyped(small, tmp_path / "half.safetensors", "blocks.0.mlp.fc1.kernel", dt)
    params, _ = vitops.load_params(half)
    original, _ = vitops.load_params(small)
    got = params["blocks.0.mlp.fc1.kernel"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, original["blocks.0.mlp.fc1.kernel"].astype(dt).astype(np.float32))


@pytest.mark.parametrize(
    "value,match", [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"), (-3e38, "beyond")]
)
def test_non_finite_or_absurd_values_are_refused_on_read(tmp_path, small, value, match):
    tensors = load_file(str(small))
    with vitops.WeightFile(small) as f:
        meta = f.metadata
    tensors["pos_embed"][1, 2] = value
    save_file(tensors, str(tmp_path / "v.safetensors"), metadata=meta)
    with pytest.raises(vitops.WeightFileError, match=rf"pos_embed holds.*{match}"):
        vitops.load(tmp_path / "v.safetensors")


def test_save_refuses_non_finite_values(tmp_path, small):
    params, config = vitops.load_params(small)
    params["head.bias"][0] = np.nan
    with pytest.raises(vitops.WeightFileError, match="head.bias holds NaN"):
        vitops.save(tmp_path / "n.safetensors", params, config)
    assert not list(tmp_path.iterdir())


def test_header_byte_ranges_and_length_are_checked_before_reading(tmp_path, small):
    data = small.read_bytes()
    (tmp_path / "h.safetensors").write_bytes((100 << 20).to_bytes(8, "little") + data[8:])
    with pytest.raises(vitops.WeightFileError, match="header length 104,857,600 exceeds"):
        vitops.load(tmp_path / "h.safetensors")
    n = int.from_bytes(data[:8], "little")
    for mutation in ("overlap", "past_end", "hole"):
        header = json.loads(data[8 : 8 + n])
        begin, end = header["cls_token"]["data_offsets"]
        header["cls_token"]["data_offsets"] = {
            "overlap": [begin - 4, end - 4],
            "hole": [begin, end + 4],
            "past_end": [begin + 2**40, end + 2**40],
        }[mutation]
        text = json.dumps(header).encode()
        (tmp_path / "o.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + data[8 + n :])
        with pytest.raises(vitops.WeightFileError, match="truncated or corrupt"):
            vitops.load(tmp_path / "o.safetensors")


def test_a_directory_is_not_a_weight_file(tmp_path):
    with pytest.raises(vitops.WeightFileError, match="is a directory"):
        vitops.load(tmp_path)


# ---- foreign checkpoints ----


def test_integer_tensors_in_a_timm_checkpoint_are_refused_not_cast(tmp_path):
    sd = make_timm("vit_small_patch16_224", **TINY, num_classes=3).state_dict()
    sd["norm.weight"] = sd["norm.weight"].to(torch.int32)
    torch.save(sd, tmp_path / "ck.pth")
    with pytest.raises(ConversionError, match=r"floating point.*norm.weight \(torch.int32\)"):
        vitops.convert(tmp_path / "ck.pth", tmp_path / "o.safetensors")
    from safetensors.torch import save_file as save_torch

    save_torch({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "ck.safetensors"))
    with pytest.raises(ConversionError, match=r"floating point.*norm.weight \(I32\)"):
        vitops.convert(tmp_path / "ck.safetensors", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    # floats of any width are cast: float16 tensors convert to their float32 values
    sd["norm.weight"] = torch.ones(128)
    save_torch({k: v.half().contiguous() for k, v in sd.items()}, str(tmp_path / "h.safetensors"))
    vitops.convert(tmp_path / "h.safetensors", tmp_path / "o.safetensors")
    params, _ = vitops.load_params(tmp_path / "o.safetensors")
    expected = sd["blocks.1.mlp.fc2.weight"].half().float().numpy().T
    np.testing.assert_array_equal(params["blocks.1.mlp.fc2.kernel"], expected)


def test_npz_zip_bomb_is_refused_before_decompressing(tmp_path):
    # 256 MiB of zeros in a 256 KB file: the declared sizes give it away
    count = 16 << 22  # 256 MiB of float32 zeros
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (count,)})
    with (
        zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("embedding/kernel.npy", "w", force_zip64=True) as f,
    ):
        f.write(header.getvalue())
        chunk = bytes(1 << 24)
        for _ in range(16):
            f.write(chunk)
    assert (tmp_path / "bomb.npz").stat().st_size < 1 << 20
    with allocations() as peak, pytest.raises(ConversionError, match="zip bomb"):
        vitops.convert(tmp_path / "bomb.npz", tmp_path / "o.safetensors")
    assert peak() < 16 << 20  # nothing decompressed: the member alone is 256 MiB


def test_npz_member_claiming_a_huge_array_is_refused(tmp_path):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)})
    with zipfile.ZipFile(tmp_path / "claim.npz", "w") as zf:
        zf.writestr("embedding/kernel.npy", buf.getvalue() + bytes(64))
    with pytest.raises(ConversionError, match="claims shape"):
        vitops.convert(tmp_path / "claim.npz", tmp_path / "o.safetensors")


def test_npz_with_integer_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "i.npz", **{"embedding/kernel": np.zeros((16, 16, 3, 8), np.int32)})
    with pytest.raises(ConversionError, match="int32.*floating point"):
        vitops.convert(tmp_path / "i.npz", tmp_path / "o.safetensors")
