"""Hugging Face vision checkpoints (save_pretrained directories, or their weight file with
config.json beside it) -> timm-named state dict + ViTConfig.

Model types (config.json "model_type"; a full CLIP or SigLIP model's tower under
"vision_config"), the classes that write them, and how their tensors are named on disk:

    vit, deit             ViTModel, ViTForImageClassification, DeiT*  vit.encoder.layer.N.attention.attention.query
    dinov2                Dinov2Model                 encoder.layer.N.attention.attention.query, layer_scale1
    dinov2_with_registers Dinov2WithRegistersModel    the same, and embeddings.register_tokens
    clip, clip_vision_model  CLIPModel, CLIPVisionModel(WithProjection)  vision_model.encoder.layers.N.self_attn.q_proj
    siglip, siglip_vision_model  SiglipModel, SiglipVisionModel  the same, and vision_model.head (MAP)
    dinov3_vit            DINOv3ViTModel              layer.N.attention.q_proj (model.layer.N in memory)

transformers 5 renames modules in memory (attention.q_proj, mlp.gate_proj...) and back on
save; both spellings are read. Each model keeps what transformers computes: the config's
LayerNorm eps (HF ViT defaults to 1e-12), its activation (CLIP's QuickGELU, SigLIP's tanh
GELU), and how it resamples position tables (Dinov2, CLIP and SigLIP: bicubic to the new
size without antialiasing, pos_interp "hf"; Dinov2 with registers: with it, as timm). What
vitops returns is each model's pooled output: the final-normed class token (HF's
pooler_output for Dinov2, CLIP and DINOv3), SigLIP's attention-pool head, CLIP's projection
(image_embeds) as "embedding". ViTModel's pooler (dense + tanh) is not part of it and is
dropped, as are a full model's text tower and logit scale.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..core.config import MAX_NAME_CHARS, ViTConfig, config_problems
from ..core.variants import HEAD_DIM
from ..errors import ConfigError, capped, clip
from ..io.bounded_json import parse_file
from ..preprocess import IMAGENET_MEAN
from .checkpoint_files import ConversionError, check_readable
from .labels import hf_labels
from .timm import structure

# model_type -> (vitops family or None: told by the normalisation, naming scheme, pos_interp)
MODEL_TYPES = {
    "vit": (None, "vit", "timm"),
    "deit": (None, "vit", "timm"),
    "dino": (None, "vit", "timm"),
    "dinov2": ("dinov2", "dinov2", "hf"),
    "dinov2_with_registers": ("dinov2", "dinov2", "timm"),
    "clip": ("clip", "clip", "hf"),
    "clip_vision_model": ("clip", "clip", "hf"),
    "siglip": ("siglip", "clip", "hf"),
    "siglip_vision_model": ("siglip", "clip", "hf"),
    "dinov3_vit": ("dinov3", "dinov3", "timm"),
}
# transformers' defaults of each vision config class, for keys a config.json leaves out.
_DEFAULTS = {
    "vit": dict(image_size=224, patch_size=16, layer_norm_eps=1e-12, hidden_act="gelu"),
    "dinov2": dict(
        image_size=224, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu", num_attention_heads=12
    ),
    "dinov2_with_registers": dict(
        image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu", num_attention_heads=12
    ),
    "clip": dict(
        image_size=224, patch_size=32, layer_norm_eps=1e-5, hidden_act="quick_gelu", num_attention_heads=12
    ),
    "siglip": dict(
        image_size=224,
        patch_size=16,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        num_attention_heads=12,
    ),
    "dinov3_vit": dict(
        image_size=224,
        patch_size=16,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        num_attention_heads=6,
        rope_theta=100.0,
    ),
}
for _alias, _base in (
    ("deit", "vit"),
    ("dino", "vit"),
    ("clip_vision_model", "clip"),
    ("siglip_vision_model", "siglip"),
):
    _DEFAULTS[_alias] = _DEFAULTS[_base]
# What each model type's tensors must show (structure's facts): a config.json naming another
# model's type is an error, not a silently different model.
_SHAPE_OF = {
    "vit": dict(layer_scale=False, pre_norm=False, class_token=True, pos_embed="all"),
    "dinov2": dict(layer_scale=True, pre_norm=False, class_token=True, reg_tokens=0, pos_embed="all"),
    "dinov2_with_registers": dict(layer_scale=True, pre_norm=False, class_token=True, pos_embed="patches"),
    "clip": dict(layer_scale=False, pre_norm=True, class_token=True, pos_embed="all"),
    "siglip": dict(layer_scale=False, pre_norm=False, class_token=False, pool="map"),
    "dinov3_vit": dict(layer_scale=True, pre_norm=False, class_token=True, pos_embed="none"),
}
for _alias, _base in (
    ("deit", "vit"),
    ("dino", "vit"),
    ("clip_vision_model", "clip"),
    ("siglip_vision_model", "siglip"),
):
    _SHAPE_OF[_alias] = _SHAPE_OF[_base]
# transformers' activation names (transformers.activations.ACT2CLS) -> vitops'
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "quick_gelu": "quick_gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",  # the tanh formula, written out
    "silu": "silu",
    "swish": "silu",
}
# config.json sizes, checked against the tensors' shapes (ViTConfig field they must equal)
_SIZES = {
    "hidden_size": "dim",
    "num_hidden_layers": "depth",
    "patch_size": "patch_size",
    "intermediate_size": "mlp_dim",
    "num_register_tokens": "reg_tokens",
    "projection_dim": "proj_dim",
}
# A config.json is a few KB; with 21k class names in id2label about 1 MB.
MAX_JSON_BYTES = 16 << 20

# ---- names: each scheme's tensors -> timm's names (then vitops.converters.timm does the rest)

_VIT_BLOCK = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "norm1": "norm1",  # Dinov2, DINOv3
    "norm2": "norm2",
    "layer_norm1": "norm1",  # CLIP, SigLIP
    "layer_norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "self_attn.out_proj": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.fc1",  # Dinov2's packed SwiGLU, rows [gate | value] as timm's
    "mlp.weights_out": "mlp.fc2",
    "mlp.gate_proj": "mlp.fc1_g",  # transformers 5's SwiGLU (Dinov2 in memory, DINOv3)
    "mlp.down_proj": "mlp.fc2",
    "layer_scale1": "ls1",
    "layer_scale2": "ls2",
}
_QKV = {
    "attention.attention.query": "q",
    "attention.attention.key": "k",
    "attention.attention.value": "v",
    "attention.q_proj": "q",
    "attention.k_proj": "k",
    "attention.v_proj": "v",
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.class_embedding": "cls_token",  # CLIP: a (D,) vector
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.position_embedding.weight": "pos_embed",  # CLIP, SigLIP: (T, D) nn.Embedding
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",  # DINOv3
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "embeddings.patch_embedding.weight": "patch_embed.proj.weight",  # CLIP, SigLIP
    "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
    "pre_layrnorm.weight": "norm_pre.weight",  # CLIP's spelling
    "pre_layrnorm.bias": "norm_pre.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
    "norm.weight": "norm.weight",  # DINOv3
    "norm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
    "cls_classifier.weight": "head.weight",
    "cls_classifier.bias": "head.bias",
    "distillation_classifier.weight": "head_dist.weight",
    "distillation_classifier.bias": "head_dist.bias",
    "visual_projection.weight": "proj.weight",  # CLIP's image embedding, bias-free
    "head.probe": "attn_pool.latent",  # SigLIP's multihead attention-pool head
    "head.attention.out_proj.weight": "attn_pool.proj.weight",
    "head.attention.out_proj.bias": "attn_pool.proj.bias",
    "head.layernorm.weight": "attn_pool.norm.weight",
    "head.layernorm.bias": "attn_pool.norm.bias",
    "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight",
    "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias",
    "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight",
    "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias",
}
_LAYER = re.compile(r"^(?:encoder\.layers?|layers?|model\.layer)\.(\d+)\.(.+)$")
# Prefixes of the task models around a backbone, and what a full model holds besides the
# vision tower (never read: text tower, logit scale and bias).
_PREFIXES = ("vit.", "deit.", "dinov2.", "vision_model.")
_OTHER_TOWER = re.compile(r"^(text_model\.|text_projection\.|logit_scale$|logit_bias$)")
# Buffers and training-only tensors: position ids (integers, in older CLIP files), the
# masked-image-modelling token, ViTModel's pooler.
_DROPPED = re.compile(r"(^|\.)position_ids$|^embeddings\.mask_token$|^pooler\.")


def ignored(key: str) -> bool:
    """Keys of a Hugging Face file that are not the vision model's weights."""
    return bool(_OTHER_TOWER.match(key) or _DROPPED.search(_strip(key)))


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def is_hf_state_dict(sd) -> bool:
    return any(
        _strip(k).startswith(("embeddings.patch_embeddings", "embeddings.patch_embedding.")) for k in sd
    )


def hf_to_timm(sd: Mapping, model_type: str = "vit", missing_bias: tuple[str, ...] = ()) -> dict:
    """Rename HF tensors to timm's names: q, k, v become one fused qkv (rows [q | k | v]),
    SigLIP's packed head projection splits into q and kv, Dinov2 with registers folds the
    class token's position into the token (timm's layout). `missing_bias` names the parts of
    the qkv bias a model has none of (DINOv3's key), which are zero."""
    out, qkv, unknown = {}, {}, []
    names = {_strip(k) for k in sd}
    for key, value in sd.items():
        if ignored(key):
            continue
        k = _strip(key)
        m = _LAYER.match(k)
        if m:
            i, rest = m.groups()
            base, _, kind = rest.rpartition(".")
            if base in _QKV:
                qkv.setdefault((i, kind), {})[_QKV[base]] = value
            elif rest.endswith(".lambda1") and rest.removesuffix(".lambda1") in _VIT_BLOCK:
                out[f"blocks.{i}.{_VIT_BLOCK[rest.removesuffix('.lambda1')]}.gamma"] = value
            elif base == "mlp.up_proj":  # DINOv3: the value of a SwiGLU, or a plain MLP's fc1
                gated = f"{k.rsplit('.', 2)[0]}.gate_proj.{kind}" in names
                out[f"blocks.{i}.mlp.{'fc1_x' if gated else 'fc1'}.{kind}"] = value
            elif base in _VIT_BLOCK:
                out[f"blocks.{i}.{_VIT_BLOCK[base]}.{kind}"] = value
            else:
                unknown.append(key)
        elif k in ("head.attention.in_proj_weight", "head.attention.in_proj_bias"):
            kind = "weight" if k.endswith("weight") else "bias"
            d = np.shape(value)[0] // 3  # nn.MultiheadAttention packs [q | k | v]
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = value[:d], value[d:]
        elif k in _TOP:
            out[_TOP[k]] = value
        else:
            unknown.append(key)
    for (i, kind), parts in qkv.items():
        if kind == "bias":
            for name in missing_bias:
                if name not in parts and "q" in parts:
                    parts[name] = np.zeros_like(parts["q"])
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
            f"{len(unknown)} tensor(s) of this {model_type} checkpoint have no place in the ViT family "
            f"vitops runs: {capped(sorted(unknown), 20)}"
        )
    if "reg_token" in out and "pos_embed" in out and "cls_token" in out and model_type != "dinov3_vit":
        out = fold_class_position(out)
    return out


def fold_class_position(sd: dict) -> dict:
    """DINOv2 with registers adds the class token's position before inserting the registers,
    which get none: as timm stores it, the class token absorbs its position and the table
    covers the patches only."""
    pos, cls = np.asarray(sd["pos_embed"]), np.asarray(sd["cls_token"])
    if pos.ndim != 3 or cls.ndim != 3 or pos.shape[1] < 2:
        raise ConversionError(
            f"position table {pos.shape} and class token {cls.shape}: expected (1, 1 + patches, dim) and (1, 1, dim)"
        )
    return {**sd, "cls_token": cls + pos[:, :1], "pos_embed": pos[:, 1:]}


# ---- files and config.json


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

    model_type: str  # one of MODEL_TYPES (a full model's: its vision tower's)
    values: dict  # the vision config's keys, transformers' defaults filled in
    imagenet: bool  # normalised with ImageNet's mean (ViT family: DeiT or DINO, not Google ViT)
    labels: list | None  # id2label, unless the placeholder
    preprocessor: dict | None  # preprocessor_config.json
    config_path: str
    preprocessor_path: str | None


def _flag(c: Mapping, key: str, default: bool, path: str) -> bool:
    value = c.get(key, default)
    if not isinstance(value, bool):
        raise ConversionError(f"{path}: {key} must be true or false, got {clip(value)}")
    return value


def read_hf_info(config_path: str, preprocessor_path: str | None) -> HFInfo:
    """Read and check config.json (and preprocessor_config.json): types, ranges, supported
    options; every problem names the file."""
    top = read_json(config_path)
    model_type = top.get("model_type")
    if not isinstance(model_type, str) or model_type not in MODEL_TYPES:
        raise ConversionError(
            f"{config_path}: model_type {clip(model_type)} is not one vitops converts "
            f"({', '.join(MODEL_TYPES)})"
        )
    c = top
    if model_type in ("clip", "siglip"):  # a full model: its image tower's config
        c = top.get("vision_config", {})
        if not isinstance(c, dict):
            raise ConversionError(f"{config_path}: vision_config must be an object, got {clip(c)}")
    values = {**_DEFAULTS[model_type], **c}
    if model_type == "clip":  # a full CLIP model names its image projection at the top
        values["projection_dim"] = top.get("projection_dim", 512)
    act = values.get("hidden_act")
    if not isinstance(act, str) or act not in HF_ACTIVATIONS:
        raise ConversionError(
            f"{config_path}: hidden_act {clip(act)} is not one vitops implements ({', '.join(HF_ACTIVATIONS)})"
        )
    if values.get("num_channels", 3) != 3:
        raise ConversionError(
            f"{config_path}: num_channels {clip(values.get('num_channels'))}; vitops reads RGB"
        )
    if model_type in ("vit", "deit", "dino", "dinov2", "dinov2_with_registers") and not _flag(
        values, "qkv_bias", True, config_path
    ):
        raise ConversionError(f"{config_path}: qkv_bias=false is not supported for {model_type}")
    if model_type.startswith("siglip") and not _flag(values, "vision_use_head", True, config_path):
        raise ConversionError(
            f"{config_path}: vision_use_head=false: a SigLIP tower without its attention-pool "
            "head has no pooled output; vitops converts the tower with its head"
        )
    if model_type == "dinov3_vit":
        for key in ("proj_bias", "mlp_bias"):
            if not _flag(values, key, True, config_path):
                raise ConversionError(f"{config_path}: {key}=false is not supported")
    absent = [k for k in ("hidden_size", "num_hidden_layers") if k not in values]
    if absent:
        raise ConversionError(f"{config_path}: no {', '.join(absent)}")
    fields = {f: values[k] for k, f in _SIZES.items() if k in values}
    fields.update(
        num_heads=values.get("num_attention_heads", 0),
        image_size=values["image_size"],
        layer_norm_eps=values["layer_norm_eps"],
    )
    if model_type == "dinov3_vit":
        fields.update(rope_base=values["rope_theta"], pos_embed="none")
    names = {v: k for k, v in _SIZES.items()} | {
        "num_heads": "num_attention_heads",
        "rope_base": "rope_theta",
    }
    problems = config_problems(fields, names=names)
    if problems:
        raise ConversionError(f"{config_path}: " + capped(problems, sep="; "))
    labels = hf_labels(top, config_path)
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
        imagenet = model_type == "deit"
    return HFInfo(model_type, values, imagenet, labels, pre, config_path, preprocessor_path)


def missing_bias(info: HFInfo) -> tuple[str, ...]:
    """The parts of the qkv bias a model is configured without (DINOv3: the key's)."""
    if info.model_type != "dinov3_vit":
        return ()
    return tuple(
        p
        for p, key in (("q", "query_bias"), ("k", "key_bias"), ("v", "value_bias"))
        if not _flag(info.values, key, p != "k", info.config_path)
    )


def hf_config(info: HFInfo, sd) -> ViTConfig:
    """The ViTConfig of a Hugging Face checkpoint: the deltas from which tensors exist (timm's
    `structure`), the rest from config.json, whose sizes must agree with the tensors'."""
    path, values = info.config_path, info.values
    facts = structure(sd)
    family, _, pos_interp = MODEL_TYPES[info.model_type]
    if family is None:  # ViT, DeiT, DINO: told apart by the normalisation and the head
        family = (
            ("deit" if facts["distilled"] or facts["num_classes"] else "dino") if info.imagenet else "vit"
        )
    odd = [f"{k} {facts[k]!r}" for k, v in _SHAPE_OF[info.model_type].items() if facts[k] != v]
    if odd:
        raise ConversionError(
            f"{path}: model_type {info.model_type!r}, but the tensors are not of one: " + ", ".join(odd)
        )
    declared = {f: values[k] for k, f in _SIZES.items() if k in values}
    if info.model_type.startswith("dinov2") and "intermediate_size" not in values:
        declared.pop("mlp_dim", None)  # Dinov2 gives mlp_ratio; the tensors give the width
    if info.model_type == "dinov2_with_registers":
        declared.setdefault("reg_tokens", 4)
    if not facts["proj_dim"]:
        declared.pop("proj_dim", None)  # a CLIPVisionModel's config names a projection it lacks
    hf_name = {f: k for k, f in _SIZES.items()}
    clash = [f"{hf_name[k]} {v} (the tensors say {facts[k]})" for k, v in declared.items() if facts[k] != v]
    if facts["pos_embed"] != "none" and tuple(facts["image_size"]) != _pair(values["image_size"]):
        clash.append(
            f"image_size {clip(values['image_size'])} (the position table covers {list(facts['image_size'])})"
        )
    if clash:
        raise ConversionError(f"{path}: config.json does not match the weights: " + "; ".join(clash))
    swiglu = facts["mlp"] == "swiglu"
    if info.model_type == "dinov2" and _flag(values, "use_swiglu_ffn", False, path) != swiglu:
        raise ConversionError(
            f"{path}: use_swiglu_ffn is {values.get('use_swiglu_ffn')}, the weights say {swiglu}"
        )
    if info.model_type == "dinov3_vit" and _flag(values, "use_gated_mlp", False, path) != swiglu:
        raise ConversionError(
            f"{path}: use_gated_mlp is {values.get('use_gated_mlp')}, the weights say {swiglu}"
        )
    act = HF_ACTIVATIONS[values["hidden_act"]]
    if swiglu and info.model_type == "dinov2":
        act = "silu"  # Dinov2's SwiGLU gates with SiLU whatever hidden_act says
    heads = values.get("num_attention_heads") or facts["dim"] // HEAD_DIM
    fields = dict(
        facts,
        num_heads=heads,
        family=family,
        act=act,
        layer_norm_eps=float(values["layer_norm_eps"]),
        pos_interp=pos_interp,
        name=os.path.basename(os.path.dirname(os.path.abspath(path)))[:MAX_NAME_CHARS],
    )
    if facts["pos_embed"] == "none":
        fields.update(
            image_size=_pair(values["image_size"]), rope_base=float(values.get("rope_theta", 100.0))
        )
    try:
        return ViTConfig(**fields)
    except ConfigError as e:
        raise ConversionError(f"{path}: {e}") from None


def _pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)
