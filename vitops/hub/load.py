"""Loading a model by what the user has: a loaded model, a vitops file, a shipped model name or a
registry name. The one place that tells these apart (the CLI and the report resolve through it).
"""

from __future__ import annotations

import os

from ..core.model import VisionTransformer
from ..io.weight_file import WeightFile

# Config fields a caller may change at load time: none of them changes the weights.
LOAD_OVERRIDES = ("pos_interp", "family", "name")


def model_path(name) -> str:
    """The vitops file behind `name`: a path as it is, a shipped model's file, or a registry
    model's cached file (downloaded, verified and converted on first use)."""
    path = os.fspath(name)
    if not os.path.exists(path) and os.sep not in path:
        from . import cache, shipped

        local = shipped.model_path(path)
        if local is not None:
            return str(local)
        if path in cache.registry():
            return str(cache.fetch(path))
    return path


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
    bad = sorted(set(overrides) - set(LOAD_OVERRIDES))
    if bad:
        raise TypeError(f"load() cannot override {bad}; allowed: {sorted(LOAD_OVERRIDES)}")
    with WeightFile(model_path(path)) as f:
        config = f.config.replace(**overrides) if overrides else f.config
        return VisionTransformer(config, params=f, metadata=f.metadata, dtype=dtype)


def resolve_model(model, dtype=None) -> VisionTransformer:
    """A loaded model as it is; anything else through `load`."""
    if isinstance(model, VisionTransformer):
        return model
    return load(model, dtype=dtype)
