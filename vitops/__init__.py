"""vitops: Vision Transformers in pure keras.ops, on JAX, PyTorch or TensorFlow.

    model = vitops.load("vit_s16.safetensors")   # a keras.Model
    logits = model(images)                       # (B, Y, X, 3), preprocessed
    out = model(images, return_attention=True, return_hidden=True)

Shapes, everywhere in vitops (one letter per meaning):

    B  images in a batch            L  blocks              H  attention heads
    T  tokens, P + N                P  prefix tokens (class, distillation, registers)
    N  patches, I * J               I, J  patch-grid rows and columns
    Q  query tokens computed        D  width               E  head width, D / H
    M  MLP hidden width             C  classes             Y, X  image height and width (pixels)
    S  sample images (figures)      U  units, K augmented copies (feature visualisation)

The package: `core` (the model), `backend` (the only place that looks at the backend), `io`
(files in and out), `hub` (models by name), `converters` (foreign checkpoints), `analysis`
(kernels, accumulators, in-forward reductions), `app` (the `vitops` command and its report).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

# TensorFlow (Keras' default backend) logs C++ start-up banners; keep them quiet unless asked.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Before anything imports Keras: with KERAS_BACKEND unset and Keras' configured backend not
# installed, use an installed one (see backend.select). Nothing below this line imports Keras
# before the choice is made.
from .backend.select import choose_backend as _choose_backend

_CHOSEN, _PROBLEM = _choose_backend()

from .core.config import ViTConfig
from .core.variants import VARIANTS, get_config
from .errors import *  # noqa: F403 - the error classes (errors.__all__)
from .errors import BackendError
from .errors import __all__ as _errors
from .preprocess import Preprocessing

try:
    __version__ = version("vitops")  # one source: pyproject.toml
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

_NEEDS_BACKEND = (
    "load",
    "forward",
    "convert",
    "analyze",
    "VisionTransformer",
    "param_shapes",
    "WeightFile",
    "load_params",
    "save",
    "read_labels",
)

if _PROBLEM is None:
    from .app.commands import analyze
    from .converters import convert
    from .core.model import VisionTransformer
    from .core.vit import forward, param_shapes
    from .hub.load import load
    from .io.weight_file import WeightFile, load_params, read_labels, save
else:  # no Keras backend installed: the package imports, and using it says what to install

    def __getattr__(name):
        if name in _NEEDS_BACKEND:
            raise BackendError(_PROBLEM)
        raise AttributeError(f"module 'vitops' has no attribute {name!r}")


__all__ = ["ViTConfig", "VARIANTS", "get_config", "Preprocessing", *_NEEDS_BACKEND, *_errors]
