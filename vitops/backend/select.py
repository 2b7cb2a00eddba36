"""Choosing a Keras backend before Keras is imported (Keras picks it once, at import).

With KERAS_BACKEND unset, Keras uses the backend in its keras.json, TensorFlow by default. A
user who installed vitops with only the jax or torch extra has no TensorFlow, and would get an
import error. So when the configured backend is not installed, vitops sets KERAS_BACKEND to an
installed one (jax, then torch, then tensorflow) and says so. Importing nothing heavy here.
"""

from __future__ import annotations

import importlib.util
import json
import os

BACKENDS = ("jax", "torch", "tensorflow")  # preference order when the configured one is missing
EXTRAS_HINT = "pip install 'vitops[jax]' (or vitops[torch], vitops[tensorflow])"


def installed(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def configured_backend() -> str:
    """What Keras would use: KERAS_BACKEND, else keras.json's "backend", else tensorflow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            backend = json.load(f).get("backend")
        if isinstance(backend, str) and backend:
            return backend
    except (OSError, ValueError, AttributeError, RecursionError):
        pass
    return "tensorflow"


# What `choose_backend` decided, once per process: (backend chosen here or None, problem or None).
_OUTCOME: tuple[str | None, str | None] | None = None


def choose_backend() -> tuple[str | None, str | None]:
    """Returns (backend chosen here or None, problem or None), deciding once per process. Sets
    KERAS_BACKEND when the configured backend is missing and another is installed; never when
    the user set it."""
    global _OUTCOME
    if _OUTCOME is None:
        _OUTCOME = _choose()
    return _OUTCOME


def _choose() -> tuple[str | None, str | None]:
    if os.environ.get("KERAS_BACKEND"):
        return None, None
    want = configured_backend()
    if installed(want):
        return None, None
    for b in BACKENDS:
        if installed(b):
            os.environ["KERAS_BACKEND"] = b
            return b, None
    return None, f"no Keras backend is installed (Keras is configured for {want}): {EXTRAS_HINT}"
