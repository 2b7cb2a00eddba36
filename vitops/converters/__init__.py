"""Convert foreign checkpoints into one vitops .safetensors file.

    convert(src, dst, arch=None, format=None, which="teacher", labels=None,
            preprocessing=None, act=None) -> ViTConfig

Formats (detected, or named with `format`):
  timm      timm state dicts, .safetensors (timm's hub files) or .pth: every family
  deit      DeiT and DeiT III release .pth files ({"model": state_dict})
  dino      DINO release .pth files: backbones, or training checkpoints with teacher/student
  dinov2    DINOv2 release .pth files, with and without registers
  dinov3    DINOv3 release .pth files
  openclip  OpenCLIP / OpenAI CLIP state dicts (the image tower under "visual.")
  hf        Hugging Face ViT, DeiT, Dinov2 (with registers), CLIP, SigLIP and DINOv3 models: a
            save_pretrained directory, or its weight file with config.json beside it
  npz       Google .npz (original, augreg, big_vision; ImageNet-21k pre-logits included)

Class names and preprocessing travel with the weights (metadata "labels" and
"preprocessing"; sources in convert/labels.py and convert/preprocessing.py).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..core.config import ACTIVATIONS, ViTConfig
from ..errors import ConfigError, ConversionError, capped, clip
from ..io import weight_file
from ..io.temporary import atomic_output
from ..preprocess import Preprocessing
from .checkpoint_files import flatten_tensors, read_checkpoint
from .hf import find_files, hf_config, hf_to_timm, ignored, is_hf_state_dict, missing_bias, read_hf_info
from .labels import check_labels, default_labels, read_labels_file
from .npz import is_npz_dict, npz_to_vitops, read_npz
from .preprocessing import given_preprocessing, hf_preprocessing, timm_preprocessing
from .releases import POS_INTERP, RELEASES, TO_TIMM, WHICH, is_wrapped, kept, release_format, unwrap
from .timm import checked_arch, is_timm_state_dict, timm_to_vitops

FORMATS = ("timm", *RELEASES, "hf", "npz")


@dataclass(frozen=True)
class Checkpoint:
    """A foreign checkpoint, read and converted to vitops arrays, with what its files say."""

    params: dict
    config: ViTConfig
    format: str  # one of FORMATS
    weights_file: str  # the file the tensors came from
    labels: list | None = None  # class names its own files give (Hugging Face id2label)
    labels_source: str = ""  # where they come from, for messages
    preprocessing: Preprocessing | None = None  # what its own files say


def detect_format(sd) -> str:
    if is_wrapped(sd):
        return unwrap(sd)[1]
    if release_format(sd):
        return release_format(sd)
    if is_npz_dict(sd):
        return "npz"
    if is_hf_state_dict(sd):
        return "hf"
    if is_timm_state_dict(sd):
        return "timm"
    raise ConversionError(
        f"cannot tell the checkpoint format from its keys ({capped(list(sd), 6)}); "
        f"known formats: {', '.join(FORMATS)}"
    )


def _apply_arch(config: ViTConfig, arch: str | None) -> ViTConfig:
    """Take family and name from a named architecture, after checking that the checkpoint's
    own config (Hugging Face config.json, or the .npz shapes) fits it."""
    if not arch:
        return config
    fields = ("dim", "depth", "num_heads", "patch_size", "mlp_dim", "image_size", "distilled")
    base = checked_arch(arch, {f: getattr(config, f) for f in fields})
    return config.replace(family=base.family, name=base.name)


def _load_hf(src, arch) -> Checkpoint:
    wfile, cfile, pfile = find_files(src)
    info = read_hf_info(cfile, pfile)  # the JSON files first: cheap, and they bound the model
    raw = read_checkpoint(wfile)
    tensors = flatten_tensors({k: v for k, v in raw.items() if not ignored(k)}, wfile)
    sd = hf_to_timm(tensors, info.model_type, missing_bias(info))
    config = _apply_arch(hf_config(info, sd), arch)
    params, config = timm_to_vitops(sd, config=config)
    pre = None
    if info.preprocessor is not None:
        pre = hf_preprocessing(
            info.preprocessor,
            Preprocessing.for_family(config.family, config.image_size),
            info.preprocessor_path,
        )
    labels = info.labels if config.num_classes else None
    return Checkpoint(params, config, "hf", wfile, labels, f"{cfile} id2label", pre)


def _load(src, arch, format, which, act) -> Checkpoint:
    if os.path.isdir(src) or format == "hf":
        return _load_hf(src, arch)
    if src.endswith(".npz") or format == "npz":
        params, config = npz_to_vitops(read_npz(src), name=os.path.basename(src).removesuffix(".npz"))
        return Checkpoint(params, _apply_arch(config, arch), "npz", src)
    raw = read_checkpoint(src)
    fmt = format or detect_format(raw)
    if fmt == "hf":
        return _load_hf(src, arch)
    if fmt == "npz":
        params, config = npz_to_vitops(flatten_tensors(raw, src))
        return Checkpoint(params, _apply_arch(config, arch), "npz", src)
    if is_wrapped(raw):
        sd, found = unwrap(raw, which)
        fmt = format or found
    else:
        sd = raw
    openai = fmt == "openclip" and "input_resolution" in sd  # OpenAI's own state dicts hold it
    tensors = flatten_tensors({k: v for k, v in sd.items() if kept(fmt, k)}, src)
    if fmt in TO_TIMM:
        tensors = TO_TIMM[fmt](tensors)
    if fmt == "openclip" and act is None and not arch and not openai:
        raise ConversionError(
            f"{src}: an OpenCLIP state dict does not say which activation its tower was trained "
            "with: pass act='quick_gelu' (OpenAI's weights, open_clip's *-quickgelu models) or "
            "act='gelu' (--act on the command line)"
        )
    prefer = fmt if fmt in ("deit", "dino", "dinov2") else None
    params, config = timm_to_vitops(tensors, arch, prefer=None if arch else prefer)
    if fmt in POS_INTERP:
        config = config.replace(pos_interp=POS_INTERP[fmt](sd))
    if openai and act is None:
        config = config.replace(act="quick_gelu")
    return Checkpoint(params, config, fmt, src)


def load_checkpoint(src, arch=None, format=None, which="teacher", act=None) -> Checkpoint:
    """Read any supported checkpoint into vitops arrays and config; every problem is a
    ConversionError naming the file. `act` sets the activation where the tensors cannot
    tell it (a CLIP tower: OpenAI's QuickGELU or GELU)."""
    src = os.fspath(src)
    if act is not None and act not in ACTIVATIONS:
        raise ConversionError(f"unknown activation {clip(act)}; one of {', '.join(ACTIVATIONS)}")
    if format is not None and format not in FORMATS:
        raise ConversionError(f"unknown format {clip(format)}; known formats: {', '.join(FORMATS)}")
    if which not in WHICH:
        raise ConversionError(f"which must be one of {', '.join(WHICH)}, got {clip(which)}")
    try:
        ck = _load(src, arch, format, which, act)
        if act is not None and act != ck.config.act:
            ck = dataclasses.replace(ck, config=ck.config.replace(act=act))
        return ck
    except ConfigError as e:  # shapes or a name that make no valid ViT: say which file
        raise ConversionError(f"{src}: {e}") from None


def convert(
    src,
    dst,
    arch: str | None = None,
    format: str | None = None,
    which: str = "teacher",
    labels=None,
    preprocessing=None,
    act: str | None = None,
) -> ViTConfig:
    """Convert checkpoint `src` into vitops file `dst`; returns the model's config.

    labels: class names (a list, or a file with one name per line), as many as the head has
    classes; default: the checkpoint's own (Hugging Face id2label), else ImageNet-1k's for a
    1000-class timm/DeiT/Google head. preprocessing: a Preprocessing or a mapping of its fields
    (a registry entry's); default: the checkpoint's own files, else timm's pretrained config
    for `arch` with a tag (when timm is installed), else none recorded (family defaults).
    act: the MLP activation, where the checkpoint cannot say (a CLIP tower trained with
    QuickGELU, as OpenAI's were, or GELU); it replaces what the tensors or `arch` give.

    The destination is checked first (a folder, an unwritable place), everything else before
    anything is written, and the write is atomic: on any error or interruption `dst` is left
    as it was (absent, or the previous file). Errors are VitopsErrors (ConversionError, or
    ConfigError for an unknown arch).
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ConversionError("source and destination are the same file")
    if arch is not None:
        from ..core.variants import get_config

        get_config(arch)  # an unknown name fails before any file is read
    if isinstance(labels, (str, os.PathLike)):
        labels = read_labels_file(labels)
    elif labels is not None:
        labels = check_labels(labels, "labels")
    if preprocessing is not None:
        given_preprocessing(preprocessing, Preprocessing.for_family("vit"))  # fail early
    with atomic_output(dst, ConversionError, weight_file.is_weight_file, "vitops weight file") as tmp:
        ck = load_checkpoint(src, arch, format, which, act)
        config = ck.config
        names, source = (labels, "the labels given") if labels is not None else (ck.labels, ck.labels_source)
        if names is None and config.num_classes:
            names, source = default_labels(config.num_classes, ck.format), "default"
        if names is not None and len(names) != config.num_classes:
            raise ConversionError(
                f"{len(names)} class names for a head of {config.num_classes} classes "
                f"({source}); --labels FILE gives one name per line"
            )
        base = Preprocessing.for_family(config.family, config.image_size)
        pre = (
            given_preprocessing(preprocessing, base)
            if preprocessing is not None
            else ck.preprocessing or timm_preprocessing(arch)
        )
        try:
            digest = weight_file.sha256_file(ck.weights_file)
        except OSError as e:
            raise ConversionError(f"cannot read {ck.weights_file}: {e.strerror}") from None
        provenance = {
            "source_format": ck.format,
            "source_file": os.path.basename(os.path.normpath(src)),
            "source_sha256": digest,
        }
        metadata = weight_file.file_metadata(config, provenance, names, pre, ConversionError)
        weight_file.write(tmp, ck.params, config, metadata, error=ConversionError, name=dst)
    return config


__all__ = ["ConversionError", "convert", "detect_format", "load_checkpoint", "Checkpoint", "FORMATS"]
