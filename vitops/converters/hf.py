"""Hugging Face ViT / DeiT / DINO checkpoints (save_pretrained directories, or their weight
file with config.json beside it) -> timm-named state dict + ViTConfig.

Hub files use the names `vit.encoder.layer.N.attention.attention.query.weight`; transformers 5
names its modules `vit.layers.N.attention.q_proj.weight` in memory. Both are read. The config's
LayerNorm eps is kept (HF defaults to 1e-12, not timm's 1e-6). ViTModel's pooler (dense + tanh)
is not part of what vitops returns, the final-normed CLS token, and is dropped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from ..core.config import MAX_NAME_CHARS, ViTConfig, config_problems
from ..errors import ConfigError, capped, clip
from ..io.bounded_json import parse_file
from ..preprocess import IMAGENET_MEAN
from .checkpoint_files import ConversionError, check_readable
from .labels import hf_labels

# config.json keys -> ViTConfig fields, and transformers' defaults where a key may be absent.
HF_FIELDS = {
    "hidden_size": "dim",
    "num_hidden_layers": "depth",
    "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim",
    "image_size": "image_size",
    "patch_size": "patch_size",
    "layer_norm_eps": "layer_norm_eps",
}
HF_DEFAULTS = {"image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-12}
# A config.json is a few KB; with 21k class names in id2label about 1 MB.
MAX_JSON_BYTES = 16 << 20

_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_BLOCK = {
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "attention.o_proj.weight": "attn.proj.weight",
    "attention.o_proj.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight",
    "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight",
    "distillation_classifier.bias": "head_dist.bias",
}


def is_hf_state_dict(sd) -> bool:
    return any(
        k.removeprefix("vit.").removeprefix("deit.").startswith("embeddings.patch_embeddings") for k in sd
    )


def find_files(src: str) -> tuple[str, str, str | None]:
    """(weights file, config.json, preprocessor_config.json or None) for a directory or file."""
    if os.path.isdir(src):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(src, name)):
                weights = os.path.join(src, name)
                break
        else:
            raise ConversionError(
                f"{src} holds no model.safetensors or pytorch_model.bin "
                "(sharded checkpoints are not supported)"
            )
        folder = src
    else:
        check_readable(src)
        weights, folder = src, os.path.dirname(os.path.abspath(src))
    config = os.path.join(folder, "config.json")
    if not os.path.lexists(config):
        raise ConversionError(f"a Hugging Face checkpoint needs its config.json beside {weights}")
    pre = os.path.join(folder, "preprocessor_config.json")
    return weights, config, pre if os.path.lexists(pre) else None


def read_json(path: str) -> dict:
    """A Hugging Face JSON file as an object; any problem is a ConversionError naming it."""
    return parse_file(path, ConversionError, MAX_JSON_BYTES)


@dataclass(frozen=True)
class HFInfo:
    """What a Hugging Face folder's JSON files say, checked before any tensor is read."""

    fields: dict  # ViTConfig fields from config.json (vitops names)
    imagenet: bool  # normalised with ImageNet's mean: DeiT or DINO, not Google ViT
    labels: list | None  # id2label, unless the placeholder
    preprocessor: dict | None  # preprocessor_config.json
    config_path: str
    preprocessor_path: str | None


def read_hf_info(config_path: str, preprocessor_path: str | None) -> HFInfo:
    """Read and check config.json (and preprocessor_config.json): types, ranges, supported
    options; every problem names the file."""
    c = read_json(config_path)
    if c.get("model_type") not in ("vit", "deit", "dino"):
        raise ConversionError(f"{config_path}: model_type {clip(c.get('model_type'))} is not a ViT or DeiT")
    if c.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(
            f"{config_path}: hidden_act {clip(c.get('hidden_act'))}; vitops implements "
            "the exact (erf) GELU that HF calls 'gelu'"
        )
    if c.get("qkv_bias", True) is not True:
        raise ConversionError(
            f"{config_path}: qkv_bias={clip(c.get('qkv_bias'))} is not supported "
            "(vitops' attention has q, k and v biases)"
        )
    if c.get("num_channels", 3) != 3:
        raise ConversionError(f"{config_path}: num_channels {clip(c.get('num_channels'))}; vitops reads RGB")
    absent = [
        k
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if k not in c
    ]
    if absent:
        raise ConversionError(f"{config_path}: no {', '.join(absent)}")
    fields = {field: c.get(key, HF_DEFAULTS.get(key)) for key, field in HF_FIELDS.items()}
    problems = config_problems(fields, names={v: k for k, v in HF_FIELDS.items()})
    if problems:
        raise ConversionError(f"{config_path}: " + capped(problems, sep="; "))
    labels = hf_labels(c, config_path)
    pre = read_json(preprocessor_path) if preprocessor_path else None
    if pre is not None:
        mean = pre.get("image_mean")
        if isinstance(mean, (int, float)) and not isinstance(mean, bool):
            mean = [mean] * 3  # image processors take one number for all channels
        ok = (
            isinstance(mean, list)
            and len(mean) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean)
        )
        if mean is not None and not ok:
            raise ConversionError(f"{preprocessor_path}: image_mean {clip(mean)} is not 3 numbers")
        imagenet = ok and bool(np.allclose(mean, IMAGENET_MEAN, atol=1e-3))
    else:
        imagenet = c.get("model_type") == "deit"
    return HFInfo(fields, imagenet, labels, pre, config_path, preprocessor_path)


def hf_config(info: HFInfo, sd) -> ViTConfig:
    """The ViTConfig of a Hugging Face checkpoint: its config.json's sizes, the tensors'
    head and distillation token, the family from its normalisation."""
    distilled = "dist_token" in sd
    head = np.shape(sd["head.weight"]) if "head.weight" in sd else (0,)
    num_classes = head[0] if len(head) == 2 else 0
    family = ("deit" if distilled or num_classes else "dino") if info.imagenet else "vit"
    name = os.path.basename(os.path.dirname(os.path.abspath(info.config_path)))
    try:
        return ViTConfig(
            **info.fields,
            num_classes=num_classes,
            distilled=distilled,
            family=family,
            name=name[:MAX_NAME_CHARS],
        )
    except ConfigError as e:
        raise ConversionError(f"{info.config_path}: {e}") from None


def hf_to_timm(sd) -> dict:
    """Rename HF tensors to timm's names; q, k, v become one fused qkv, rows [q | k | v]."""
    out, qkv, unknown = {}, {}, []
    for key, value in sd.items():
        k = key
        for prefix in ("vit.", "deit."):
            k = k.removeprefix(prefix)
        if k.startswith("pooler."):
            continue  # not part of vitops's output (see the module docstring)
        m = _LAYER.match(k)
        if m:
            i, rest = m.groups()
            base, _, kind = rest.rpartition(".")
            if base in _QKV:
                qkv.setdefault((i, kind), {})[_QKV[base]] = value
            elif rest in _BLOCK:
                out[f"blocks.{i}.{_BLOCK[rest]}"] = value
            else:
                unknown.append(key)
        elif k in _TOP:
            out[_TOP[k]] = value
        else:
            unknown.append(key)
    for (i, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(f"layer {i}: attention {kind} has only {sorted(parts)} of q, k, v")
        shapes = {np.shape(parts[n]) for n in "qkv"}
        if len(shapes) != 1 or len(next(iter(shapes))) not in (1, 2):
            raise ConversionError(
                f"layer {i}: attention {kind} q, k, v have shapes {sorted(shapes)}, "
                "not one matrix (or vector) shape"
            )
        out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    if unknown:
        raise ConversionError(
            f"{len(unknown)} Hugging Face tensor(s) have no place in a ViT/DeiT: " + capped(unknown, 20)
        )
    return out
