"""Hugging Face ViT / DeiT / DINO checkpoints (save_pretrained directories, or their weight
file with config.json beside it) -> timm-named state dict + ViTConfig.

Hub files use the names `vit.encoder.layer.N.attention.attention.query.weight`; transformers 5
names its modules `vit.layers.N.attention.q_proj.weight` in memory. Both are read. The config's
LayerNorm eps is kept (HF defaults to 1e-12, not timm's 1e-6). ViTModel's pooler (dense + tanh)
is not part of what vitops returns, the final-normed CLS token, and is dropped.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from ..config import ViTConfig
from ..preprocess import IMAGENET_MEAN
from ._io import ConversionError

_LAYER = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")
_BLOCK = {
    "layernorm_before.weight": "norm1.weight", "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight", "layernorm_after.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "attention.o_proj.weight": "attn.proj.weight", "attention.o_proj.bias": "attn.proj.bias",
    "intermediate.dense.weight": "mlp.fc1.weight", "intermediate.dense.bias": "mlp.fc1.bias",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight", "output.dense.bias": "mlp.fc2.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_QKV = {"attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
        "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v"}
_TOP = {
    "embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight", "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight", "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight", "distillation_classifier.bias": "head_dist.bias",
}


def is_hf_state_dict(sd) -> bool:
    return any(k.removeprefix("vit.").removeprefix("deit.").startswith("embeddings.patch_embeddings")
               for k in sd)


def find_files(src: str) -> tuple[str, str, str | None]:
    """(weights file, config.json, preprocessor_config.json or None) for a directory or file."""
    if os.path.isdir(src):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(src, name)):
                weights = os.path.join(src, name)
                break
        else:
            raise ConversionError(f"{src} holds no model.safetensors or pytorch_model.bin "
                                  "(sharded checkpoints are not supported)")
        folder = src
    else:
        weights, folder = src, os.path.dirname(os.path.abspath(src))
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        raise ConversionError(f"a Hugging Face checkpoint needs its config.json beside {weights}")
    pre = os.path.join(folder, "preprocessor_config.json")
    return weights, config, pre if os.path.isfile(pre) else None


def hf_config(config_path: str, preprocessor_path: str | None, sd) -> ViTConfig:
    with open(config_path) as f:
        c = json.load(f)
    if c.get("model_type") not in ("vit", "deit", "dino"):
        raise ConversionError(f"{config_path}: model_type {c.get('model_type')!r} is not a ViT or DeiT")
    if c.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(f"{config_path}: hidden_act {c['hidden_act']!r}; vitops implements the "
                              "exact (erf) GELU that HF calls 'gelu'")
    if not c.get("qkv_bias", True):
        raise ConversionError(f"{config_path}: qkv_bias=false is not supported")
    distilled = "dist_token" in sd
    num_classes = np.shape(sd["head.weight"])[0] if "head.weight" in sd else 0
    family = "vit"
    if preprocessor_path:
        with open(preprocessor_path) as f:
            mean = json.load(f).get("image_mean")
        imagenet = mean is not None and np.allclose(mean, IMAGENET_MEAN, atol=1e-3)
    else:
        imagenet = c.get("model_type") == "deit"
    if imagenet:
        family = "deit" if distilled or num_classes else "dino"
    size = c.get("image_size", 224)
    return ViTConfig(
        image_size=size, patch_size=c.get("patch_size", 16), dim=c["hidden_size"],
        depth=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        mlp_dim=c["intermediate_size"], num_classes=num_classes, distilled=distilled,
        layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)), family=family,
        name=os.path.basename(os.path.dirname(os.path.abspath(config_path))),
    )


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
        out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    if unknown:
        raise ConversionError(f"{len(unknown)} Hugging Face tensor(s) have no place in a ViT/DeiT: "
                              + ", ".join(unknown[:20]))
    return out
