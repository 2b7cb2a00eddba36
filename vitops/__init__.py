"""vitops: Vision Transformers (ViT, DeiT, DINO) in pure keras.ops, on JAX, PyTorch or TensorFlow.

    model = vitops.load("vit_s16.safetensors")   # a keras.Model
    logits = model(images)                       # NHWC, preprocessed
    out = model(images, return_attention=True, return_hidden=True)
"""

from __future__ import annotations

import os

# TensorFlow (Keras' default backend) logs C++ start-up banners; keep them quiet unless asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from .config import VARIANTS, ViTConfig, get_config
from .convert import ConversionError, convert
from .model import VisionTransformer
from .vit import forward, param_shapes
from .weights import WeightFile, WeightFileError, load_params, save

__version__ = "0.1.0"


def load(path, dtype=None, **overrides) -> VisionTransformer:
    """Load a vitops weight file, or a registry model by name, as a Keras model.

    A registry name (``vitops.load("dino_vitb16")``, see `vitops models`) is downloaded,
    verified and converted once into the cache (VITOPS_HOME); later loads are offline. The
    models vitops ships ("digits_vit", "digits_deit") load by name too.
    overrides replace config fields that do not change the weights, e.g.
    ``pos_interp="dino"`` to resample position embeddings as DINO does. dtype is a Keras
    dtype policy for the model, e.g. "mixed_bfloat16" (float32 weights, bfloat16 compute) or
    "bfloat16"; default: Keras' global policy.
    """
    allowed = {"pos_interp", "family", "name"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise TypeError(f"load() cannot override {bad}; allowed: {sorted(allowed)}")
    if isinstance(path, str) and not os.path.exists(path) and os.sep not in path:
        from . import hub

        shipped = hub.shipped_path(path)
        if shipped is not None:
            path = shipped
        elif path in hub.registry():
            path = hub.fetch(path)
    with WeightFile(path) as f:
        config = f.config.replace(**overrides) if overrides else f.config
        model = VisionTransformer(config, params=f, dtype=dtype)
        model.metadata = dict(f.metadata)  # provenance, labels, preprocessing hints
        return model


__all__ = [
    "VARIANTS", "ViTConfig", "get_config", "ConversionError", "convert", "VisionTransformer",
    "forward", "param_shapes", "WeightFile", "WeightFileError", "load_params", "save", "load",
]
