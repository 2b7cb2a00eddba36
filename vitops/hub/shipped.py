"""What ships inside vitops: two small models trained on scikit-learn's handwritten digits, and
held-out sample digits, so that `vitops analyze` works offline on a fresh install.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

MODELS = ("digits_vit", "digits_deit")


def model_path(name: str):
    """The file of a model shipped inside vitops (trained by tools/train_digits.py), or None."""
    if name not in MODELS:
        return None
    path = resources.files("vitops._data").joinpath(f"{name}.safetensors")
    return Path(str(path)) if path.is_file() else None


def samples() -> list[Path]:
    """The sample images shipped with vitops (held-out digits), for `vitops analyze`."""
    folder = resources.files("vitops._data").joinpath("samples")
    return (
        sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".png")) if folder.is_dir() else []
    )
