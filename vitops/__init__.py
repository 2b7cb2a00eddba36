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
from .convert import convert
from .errors import (AnalysisError, BackendError, ConfigError, ConversionError, HubError,
                     ImageError, VitopsError, WeightFileError)
from .loading import load
from .model import VisionTransformer
from .vit import forward, param_shapes
from .weights import WeightFile, load_params, save

__version__ = "0.1.0"


__all__ = [
    "VARIANTS", "ViTConfig", "get_config", "convert", "VisionTransformer", "forward", "param_shapes",
    "WeightFile", "load_params", "save", "load",
    "VitopsError", "ConfigError", "WeightFileError", "ConversionError", "HubError", "ImageError",
    "AnalysisError", "BackendError",
]
