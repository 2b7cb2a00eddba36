"""The authors' release files, renamed to timm's names (vitops.converters.timm does the rest).

- DeiT and DeiT III (facebookresearch/deit): {"model": state_dict, ...}, timm's names (DeiT
  III's LayerScale as gamma_1/gamma_2, which the timm converter reads).
- DINO backbones (dino_*_pretrain.pth): a plain timm-named dict without a head. DINO
  training checkpoints: {"teacher": ..., "student": ...}, keys prefixed with "module." and/or
  "backbone."; the DINO projection head ("head.mlp...", "head.last_layer...") is not part of
  the ViT and is dropped.
- DINOv2 (facebookresearch/dinov2, dinov2_vit*14[_reg4]_pretrain.pth): timm's names plus a
  masked-image-modelling token (dropped), register_tokens, and ViT-g's packed SwiGLU as
  mlp.w12 (rows [gate | value]) and mlp.w3. The register models add the class token's
  position before inserting the registers; timm folds it into the class token, and so does
  this. Their position tables are resampled as the release does: without registers with
  DINO's +0.1 scale factor (pos_interp "dino"), with registers to the size, antialiased.
- DINOv3 (facebookresearch/dinov3, dinov3_vit*16_pretrain_*.pth): storage_tokens are the
  registers; qkv.bias holds a key bias that the release masks out (bias_mask), so it is
  dropped; rope_embed.periods (recomputed in float32, as timm and Hugging Face do), the mask
  token and the local-crop class norm of training are dropped; SwiGLU as mlp.w1 (gate), w2
  (value), w3.
- OpenCLIP and OpenAI CLIP state dicts (open_clip's .pt/.bin/.safetensors, or OpenAI's
  weights exported with torch.jit.load(...).state_dict()): the image tower under "visual."
  (OpenAI's layout, or a timm trunk under "visual.trunk."); the text tower is not read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from .checkpoint_files import ConversionError

WHICH = ("teacher", "student")
# Release formats this module reads, as convert's `format` names them.
RELEASES = ("deit", "dino", "dinov2", "dinov3", "openclip")


def is_wrapped(obj: Mapping) -> bool:
    return isinstance(obj, Mapping) and any(
        k in obj and isinstance(obj[k], Mapping) for k in ("model", "state_dict", *WHICH)
    )


def unwrap(obj: Mapping, which: str = "teacher") -> tuple[dict, str]:
    """Return (the state dict inside, format name: "deit", "dino", "openclip" or "timm")."""
    fmt = "timm"
    if "teacher" in obj or "student" in obj:
        if which not in WHICH:
            raise ConversionError(f"--which must be one of {WHICH}, got {which!r}")
        if which not in obj:
            raise ConversionError(
                f"this DINO checkpoint has no {which!r} weights (it has "
                f"{sorted(k for k in obj if k in WHICH)})"
            )
        obj, fmt = obj[which], "dino"
    elif "model" in obj and isinstance(obj["model"], Mapping):
        obj, fmt = obj["model"], "deit"
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):  # open_clip's training files
        obj = obj["state_dict"]
    sd = {}
    backbone = any(k.removeprefix("module.").startswith("backbone.") for k in obj)
    for key, value in obj.items():
        key = key.removeprefix("module.")
        if backbone:
            if not key.startswith("backbone."):
                continue  # DINO's projection head: not part of the ViT
            key = key.removeprefix("backbone.")
        sd[key] = value
    if backbone and fmt == "timm":
        fmt = "dino"
    return sd, release_format(sd) or fmt


def release_format(sd: Mapping) -> str | None:
    """ "dinov2", "dinov3" or "openclip" when the keys are those of that release, else None."""
    if "storage_tokens" in sd:
        return "dinov3"
    if "patch_embed.proj.weight" in sd and ("mask_token" in sd or "register_tokens" in sd):
        return "dinov2"
    if "visual.conv1.weight" in sd or "visual.trunk.patch_embed.proj.weight" in sd:
        return "openclip"
    return None


def kept(fmt: str, key: str) -> bool:
    """Whether a key of a release file is read at all (OpenCLIP: the image tower only; its
    integer entries, such as OpenAI's input_resolution, are not tensors of the model)."""
    return key.startswith("visual.") if fmt == "openclip" else True


def dinov2_to_timm(sd: Mapping) -> dict:
    out = {}
    for key, value in sd.items():
        if key == "mask_token":
            continue
        key = re.sub(r"^(blocks\.\d+\.mlp\.)w12\.", r"\1fc1.", key)  # packed [gate | value]
        key = re.sub(r"^(blocks\.\d+\.mlp\.)w3\.", r"\1fc2.", key)
        out["reg_token" if key == "register_tokens" else key] = value
    if "reg_token" in out:
        from .hf import fold_class_position

        out = fold_class_position(out)
    return out


_DINOV3_DROPPED = re.compile(r"(^mask_token$|\.bias_mask$|^rope_embed\.|^local_cls_norm\.)")
_DINOV3_MLP = {"w1": "fc1_g", "w2": "fc1_x", "w3": "fc2"}


def dinov3_to_timm(sd: Mapping) -> dict:
    out = {}
    for key, value in sd.items():
        if _DINOV3_DROPPED.search(key):
            continue
        m = re.match(r"^(blocks\.\d+\.)attn\.qkv\.bias$", key)
        if m:  # [q | k | v]: the release multiplies the key's part by a zero mask
            q, _, v = np.split(np.asarray(value), 3)
            out[m.group(1) + "attn.q_bias"], out[m.group(1) + "attn.v_bias"] = q, v
            continue
        m = re.match(r"^(blocks\.\d+\.mlp\.)(w[123])\.(weight|bias)$", key)
        if m:
            key = f"{m.group(1)}{_DINOV3_MLP[m.group(2)]}.{m.group(3)}"
        out["reg_token" if key == "storage_tokens" else key] = value
    return out


_OPENCLIP_TOP = {
    "class_embedding": "cls_token",
    "positional_embedding": "pos_embed",
    "conv1.weight": "patch_embed.proj.weight",
    "ln_pre.weight": "norm_pre.weight",
    "ln_pre.bias": "norm_pre.bias",
    "ln_post.weight": "norm.weight",
    "ln_post.bias": "norm.bias",
}
_OPENCLIP_BLOCK = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj": "attn.proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "ls_1.gamma": "ls1.gamma",
    "ls_2.gamma": "ls2.gamma",
}


def openclip_to_timm(sd: Mapping) -> dict:
    out = {}
    for key, value in sd.items():
        k = key.removeprefix("visual.")
        if k.startswith("trunk."):  # a timm model as the tower
            out[k.removeprefix("trunk.")] = value
            continue
        if k == "proj":  # (D, E), applied as x @ proj
            out["proj.weight"] = np.asarray(value).T
            continue
        if k == "head.proj.weight":  # a timm trunk's bias-free projection, (E, D)
            out["proj.weight"] = value
            continue
        m = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)$", k)
        if m:
            rest = m.group(2)
            for src, dst in _OPENCLIP_BLOCK.items():
                if rest == src or rest.startswith(src + "."):
                    rest = dst + rest[len(src) :]
                    break
            out[f"blocks.{m.group(1)}.{rest}"] = value
            continue
        out[_OPENCLIP_TOP.get(k, key)] = value  # an unknown key keeps its name, for the error
    return out


TO_TIMM = {"dinov2": dinov2_to_timm, "dinov3": dinov3_to_timm, "openclip": openclip_to_timm}
# The release's own way of resampling a position table, where it is not timm's.
POS_INTERP = {"dinov2": lambda sd: "timm" if "register_tokens" in sd else "dino"}
