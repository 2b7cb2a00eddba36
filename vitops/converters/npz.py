"""Google's .npz checkpoints (google-research/vision_transformer, augreg and original releases;
big_vision's `params/` prefix and "scan" stacking) -> vitops params + ViTConfig.

Kernels are Flax's (in, out), so they go in as they are; attention kernels are (D, H, E) and
(H, E, D) and are flattened head-major, which is timm's qkv layout. The ImageNet-21k releases
have a pre-logits layer (dense + tanh) before the head, kept as `representation_size`.

The file is a zip of .npy members. Its zip directory declares every member's uncompressed
size; they are checked against a budget (and each .npy header against its member) before
anything is decompressed, so a zip bomb is refused at the cost of reading its directory.
"""

from __future__ import annotations

import math
import os
import re
import zipfile

import numpy as np

from ..core.config import ViTConfig
from ..errors import capped, clip, clip_text
from ..io.signals import reraise_signal
from .checkpoint_files import ConversionError, check_readable

# Weights hardly compress (float32 noise: ~1.1x; np.savez stores them uncompressed), so a
# checkpoint expands to at most a few times its size; 8x, or 64 MiB for small files.
NPZ_EXPANSION = 8
NPZ_MIN_BUDGET = 64 << 20


def read_npz(path) -> dict[str, np.ndarray]:
    """Every array of a .npz file as float32, after checking the declared sizes."""
    check_readable(path)
    budget = max(NPZ_MIN_BUDGET, NPZ_EXPANSION * os.path.getsize(path))
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            declared = sum(i.file_size for i in infos)
            if declared > budget:
                raise ConversionError(
                    f"{path}: its zip directory declares {declared:,} bytes once decompressed, more "
                    f"than the {budget:,} a {os.path.getsize(path):,}-byte checkpoint may expand to "
                    "(a zip bomb?)"
                )
            return {i.filename.removesuffix(".npy"): _read_member(zf, i, path) for i in infos}
    except ConversionError:
        raise
    except Exception as e:  # noqa: BLE001 - zip errors, CRC, truncation, encrypted members
        reraise_signal(e)
        raise ConversionError(
            f"cannot read {path} as a .npz checkpoint: {type(e).__name__}: {clip_text(str(e), 200)}"
        ) from None


def _read_member(zf, info, path) -> np.ndarray:
    fmt = np.lib.format
    with zf.open(info) as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ConversionError(f"{path}: member {clip(info.filename)}: .npy version {version} is not read")
        if dtype.kind != "f":
            raise ConversionError(
                f"{path}: array {clip(info.filename)} has dtype {dtype}; a ViT's arrays are floating point"
            )
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes > info.file_size:
            raise ConversionError(
                f"{path}: array {clip(info.filename)} claims shape {shape} "
                f"({nbytes:,} bytes) in a {info.file_size:,}-byte member"
            )
        data = f.read(nbytes)
        if len(data) != nbytes or f.read(1):
            raise ConversionError(f"{path}: array {clip(info.filename)} does not fill its member")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(np.float32)


def _reshaped(array, shape, what):
    if array.size != math.prod(shape):
        raise ConversionError(
            f"Google checkpoint: {what} has shape {array.shape}, expected "
            f"{math.prod(shape)} values as {shape}"
        )
    return array.reshape(shape)


_BLOCK = re.compile(r"^Transformer/encoderblock(?:_(\d+))?/(.+)$")


# Where the releases put the model: plain, old training checkpoints, big_vision, big_vision
# image towers (the prefixes timm's .npz loader also recognises).
_PREFIXES = ("opt/target/", "params/img/", "params/", "")


def _prefix(sd) -> str | None:
    return next((p for p in _PREFIXES if f"{p}embedding/kernel" in sd), None)


def is_npz_dict(sd) -> bool:
    return _prefix(sd) is not None


def _blocks(sd):
    """{block index: {sub-key: array}}, unstacking scanned checkpoints."""
    blocks: dict[int, dict[str, np.ndarray]] = {}
    for key, value in sd.items():
        m = _BLOCK.match(key)
        if not m:
            continue
        index, rest = m.groups()
        if index is None:  # scan: one stacked array for all blocks, depth first
            if value.ndim == 0:
                raise ConversionError(f"Google checkpoint: scanned {key} has no block axis")
            for i in range(value.shape[0]):
                blocks.setdefault(i, {})[rest] = value[i]
        else:
            blocks.setdefault(int(index), {})[rest] = value
    return blocks


def _pick(block, pattern, i):
    keys = sorted(k for k in block if re.fullmatch(pattern, k))
    if not keys:
        raise ConversionError(f"encoder block {i}: no tensor matches {pattern!r}")
    return keys


def npz_to_vitops(sd, family: str = "vit", name: str = ""):
    prefix = _prefix(sd)
    if prefix is None:
        raise ConversionError("not a Google ViT checkpoint: no embedding/kernel")
    sd = {k[len(prefix) :]: np.asarray(v, np.float32) for k, v in sd.items() if k.startswith(prefix)}
    used = set()

    def take(key):
        if key not in sd:
            raise ConversionError(f"Google checkpoint has no {key!r}")
        used.add(key)
        return sd[key]

    blocks = _blocks(sd)
    used.update(k for k in sd if _BLOCK.match(k))
    if sorted(blocks) != list(range(len(blocks))):
        raise ConversionError(f"encoder blocks are not numbered 0..N-1: {capped(sorted(blocks))}")
    kernel = take("embedding/kernel")  # (P, P, 3, D) HWIO, as vitops stores it
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != 3:
        raise ConversionError(
            f"Google checkpoint: embedding/kernel has shape {kernel.shape}, expected (P, P, 3, D)"
        )
    p, d = kernel.shape[0], kernel.shape[-1]
    pos_key = next(
        (k for k in ("Transformer/posembed_input/pos_embedding", "pos_embedding") if k in sd), None
    )
    if pos_key is None:
        raise ConversionError("Google checkpoint has no position embedding")
    pos = take(pos_key)
    if d == 0 or pos.size % d:
        raise ConversionError(f"Google checkpoint: {pos_key} has shape {pos.shape}, not tokens x {d}")
    pos = pos.reshape(-1, d)
    params = {
        "patch_embed.kernel": kernel,
        "patch_embed.bias": take("embedding/bias"),
        "cls_token": _reshaped(take("cls"), (d,), "cls"),
        "pos_embed": pos,
        "norm.scale": take("Transformer/encoder_norm/scale"),
        "norm.bias": take("Transformer/encoder_norm/bias"),
    }
    heads = mlp_dim = None
    for i, b in sorted(blocks.items()):
        # The old releases number sub-modules LayerNorm_0, MultiHeadDotProductAttention_1,
        # LayerNorm_2, MlpBlock_3; big_vision LayerNorm_0/1, MultiHeadDotProductAttention_0,
        # MlpBlock_0. Order, not number, tells the two LayerNorms apart.
        norms = sorted(
            {k.split("/")[0] for k in _pick(b, r"LayerNorm_\d+/scale", i)}, key=lambda s: int(s.split("_")[1])
        )
        attn = _pick(b, r"MultiHeadDotProductAttention_\d+/query/kernel", i)[0].split("/")[0]
        mlp = _pick(b, r"MlpBlock_\d+/Dense_0/kernel", i)[0].split("/")[0]
        if len(norms) != 2:
            raise ConversionError(f"encoder block {i}: expected 2 LayerNorms, found {norms}")
        q = b[f"{attn}/query/kernel"]  # (D, H, E)
        if q.ndim != 3 or q.shape[0] != d:
            raise ConversionError(
                f"encoder block {i}: query kernel has shape {q.shape}, expected ({d}, heads, head width)"
            )
        heads = q.shape[1]
        need = [f"{attn}/{n}/{k}" for n in ("query", "key", "value", "out") for k in ("kernel", "bias")]
        need += [f"{mlp}/Dense_{j}/{k}" for j in (0, 1) for k in ("kernel", "bias")]
        need += [f"{n}/{k}" for n in norms for k in ("scale", "bias")]
        absent = [k for k in need if k not in b]
        if absent:
            raise ConversionError(f"encoder block {i}: no {capped(absent)}")
        qkv_k = [
            _reshaped(b[f"{attn}/{n}/kernel"], (d, d), f"block {i} {n} kernel")
            for n in ("query", "key", "value")
        ]
        qkv_b = [
            _reshaped(b[f"{attn}/{n}/bias"], (d,), f"block {i} {n} bias") for n in ("query", "key", "value")
        ]
        pre = f"blocks.{i}."
        params.update(
            {
                pre + "norm1.scale": b[f"{norms[0]}/scale"],
                pre + "norm1.bias": b[f"{norms[0]}/bias"],
                pre + "norm2.scale": b[f"{norms[1]}/scale"],
                pre + "norm2.bias": b[f"{norms[1]}/bias"],
                pre + "attn.qkv.kernel": np.concatenate(qkv_k, axis=1),
                pre + "attn.qkv.bias": np.concatenate(qkv_b),
                pre + "attn.proj.kernel": _reshaped(b[f"{attn}/out/kernel"], (d, d), f"block {i} out kernel"),
                pre + "attn.proj.bias": b[f"{attn}/out/bias"],
                pre + "mlp.fc1.kernel": b[f"{mlp}/Dense_0/kernel"],
                pre + "mlp.fc1.bias": b[f"{mlp}/Dense_0/bias"],
                pre + "mlp.fc2.kernel": b[f"{mlp}/Dense_1/kernel"],
                pre + "mlp.fc2.bias": b[f"{mlp}/Dense_1/bias"],
            }
        )
        if b[f"{mlp}/Dense_0/kernel"].ndim != 2:
            raise ConversionError(f"encoder block {i}: Dense_0 kernel is not a matrix")
        mlp_dim = b[f"{mlp}/Dense_0/kernel"].shape[1]
    representation = 0
    if "pre_logits/kernel" in sd:
        params["pre_logits.kernel"] = take("pre_logits/kernel")
        params["pre_logits.bias"] = take("pre_logits/bias")
        if params["pre_logits.kernel"].ndim != 2:
            raise ConversionError("Google checkpoint: pre_logits/kernel is not a matrix")
        representation = params["pre_logits.kernel"].shape[1]
    num_classes = 0
    if "head/kernel" in sd and sd["head/kernel"].ndim != 2:
        raise ConversionError(
            f"Google checkpoint: head/kernel has shape {sd['head/kernel'].shape}, not a matrix"
        )
    if "head/kernel" in sd and sd["head/kernel"].shape[-1] > 0:
        params["head.kernel"] = take("head/kernel")
        params["head.bias"] = take("head/bias")
        num_classes = params["head.kernel"].shape[1]
    else:
        used.update(k for k in ("head/kernel", "head/bias") if k in sd)
    unknown = sorted(set(sd) - used)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} tensor(s) of this Google checkpoint have no place in a ViT: {capped(unknown)}"
        )
    if not blocks:
        raise ConversionError("Google checkpoint has no encoder blocks")
    grid = pos.shape[0] - 1
    side = int(round(np.sqrt(grid)))
    if side * side != grid:
        raise ConversionError(f"pos_embedding has {pos.shape[0]} tokens: not CLS plus a square grid")
    config = ViTConfig(
        image_size=side * p,
        patch_size=p,
        dim=d,
        depth=len(blocks),
        num_heads=heads,
        mlp_dim=mlp_dim,
        num_classes=num_classes,
        representation_size=representation,
        family=family,
        name=name,
    )
    return params, config
