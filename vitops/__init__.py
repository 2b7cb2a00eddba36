"""vitops: Vision Transformers (ViT, DeiT, DINO) in pure keras.ops, on JAX, PyTorch or TensorFlow.

    model = vitops.load("vit_s16.safetensors")   # a keras.Model
    logits = model(images)                       # NHWC, preprocessed
    out = model(images, return_attention=True, return_hidden=True)
"""

from __future__ import annotations

import os

# TensorFlow (Keras' default backend) logs C++ start-up banners; keep them quiet unless asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Before anything imports Keras: with KERAS_BACKEND unset and Keras' configured backend not
# installed, use an installed one (see _select).
from ._select import choose_backend as _choose_backend  # noqa: E402

AUTO_BACKEND, BACKEND_PROBLEM = _choose_backend()

from .config import VARIANTS, ViTConfig, get_config  # noqa: E402
from .preprocess import Preprocessing  # noqa: E402
from .errors import (AnalysisError, BackendError, ConfigError, ConversionError, HubError,  # noqa: E402
                     ImageError, OutputError, VitopsError, WeightFileError)

_NEEDS_BACKEND = ("convert", "load", "VisionTransformer", "forward", "param_shapes", "WeightFile",
                  "load_params", "save", "read_labels")

if BACKEND_PROBLEM is None:
    from .convert import convert
    from .loading import load
    from .model import VisionTransformer
    from .vit import forward, param_shapes
    from .weights import WeightFile, load_params, read_labels, save
else:  # no Keras backend installed: the package imports, and using it says what to install
    def __getattr__(name):
        if name in _NEEDS_BACKEND:
            raise BackendError(BACKEND_PROBLEM)
        raise AttributeError(f"module 'vitops' has no attribute {name!r}")

__version__ = "0.1.0"


__all__ = [
    "VARIANTS", "ViTConfig", "get_config", "Preprocessing", *_NEEDS_BACKEND,
    "VitopsError", "ConfigError", "WeightFileError", "ConversionError", "HubError", "ImageError",
    "AnalysisError", "OutputError", "BackendError",
]
