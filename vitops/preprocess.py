"""Images in, model-ready NHWC float32 out: decode, to RGB, resize, centre-crop, normalise.

Per family (see REFERENCES.md): Google ViT scales to [-1, 1] (mean = std = 0.5); DeiT and DINO
use the ImageNet mean and std. The eval transform resizes the short side to size / crop_pct
and centre-crops to size (crop_pct 0.875 = 224 / 256, the keras-io example's and DeiT's).
Shrinking uses OpenCV's area filter (antialiased), enlarging its bicubic filter.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import ImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATION = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "deit": (IMAGENET_MEAN, IMAGENET_STD),
    "dino": (IMAGENET_MEAN, IMAGENET_STD),
}
DEFAULT_CROP_PCT = 0.875


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("image preprocessing needs OpenCV: pip install opencv-python-headless") from e
    return cv2


def read_image(path) -> np.ndarray:
    """Decode an image file into (H, W, 3) uint8 RGB (grayscale and RGBA converted)."""
    cv2 = _cv2()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"no such image file: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageError(f"cannot decode {path} as an image")
    return to_rgb(image, bgr=True, name=path)


def to_rgb(image: np.ndarray, bgr: bool = False, name: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) -> (H, W, 3) RGB, dtype kept.

    16-bit images are scaled to 8 bits. bgr=True for arrays straight from OpenCV."""
    cv2 = _cv2()
    image = np.asarray(image)
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
        raise ImageError(f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, "
                         f"got shape {image.shape}")
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image


def resize_and_crop(image: np.ndarray, size, crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """Resize the short side to size / crop_pct, then centre-crop to size ((h, w) or int)."""
    cv2 = _cv2()
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    short = int(round(min(th, tw) / crop_pct))
    scale = short / min(h, w)
    nh, nw = max(th, int(round(h * scale))), max(tw, int(round(w * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return resized[top:top + th, left:left + tw]


def normalize(image: np.ndarray, family: str = "vit") -> np.ndarray:
    """uint8 (or [0, 255] float) RGB -> float32 normalised the way `family` was trained."""
    if family not in NORMALIZATION:
        raise ValueError(f"unknown family {family!r}; one of {sorted(NORMALIZATION)}")
    mean, std = NORMALIZATION[family]
    x = np.asarray(image, np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def denormalize(x: np.ndarray, family: str = "vit") -> np.ndarray:
    """Inverse of `normalize`, clipped to [0, 1] float RGB, for display."""
    mean, std = NORMALIZATION[family]
    return np.clip(np.asarray(x, np.float32) * np.asarray(std, np.float32) + np.asarray(mean, np.float32), 0, 1)


def preprocess(images, size=224, family: str = "vit", crop_pct: float = DEFAULT_CROP_PCT) -> np.ndarray:
    """File paths and/or RGB arrays -> (B, size, size, 3) float32, ready for the model.

    family is the model's (``model.config.family``); size its input size.
    """
    if isinstance(images, (str, os.PathLike, np.ndarray)):
        images = [images]
    out = []
    for item in images:
        rgb = read_image(item) if isinstance(item, (str, os.PathLike)) else to_rgb(item)
        out.append(normalize(resize_and_crop(rgb, size, crop_pct), family))
    return np.stack(out)
