"""Reading image files safely: the size from the header first, then the decode.

A 69-byte PNG can claim 100000 x 100000 pixels; decoding it would need 30 GB. The header is
read first (see _imageheader) and an image with more pixels than the budget is refused before
any pixel is decoded. OpenCV then decodes (the project's image library). Every failure is an
ImageError naming the file.
"""

from __future__ import annotations

import os
import stat

import numpy as np

from ..errors import ImageError, clip_text, os_reason
from .image_header import header_size

# Pillow's own bomb threshold (PIL.Image.MAX_IMAGE_PIXELS, 0x5555555 = 89,478,485 pixels, a
# 9459 px square): 268 MB as 8-bit RGB. Override per call (max_pixels=) or with the variable.
MAX_IMAGE_PIXELS = 89_478_485
PIXELS_ENV = "VITOPS_MAX_IMAGE_PIXELS"
# Pixel types read as they are; the value range comes from the type (see preprocess.to_unit).
PIXEL_TYPES = (np.uint8, np.uint16, np.float16, np.float32, np.float64)


def _cv2():
    try:
        import cv2
    except ImportError as e:  # pragma: no cover - a dependency of vitops
        raise ImageError("image preprocessing needs OpenCV: pip install opencv-python-headless") from e
    return cv2


def pixel_budget(max_pixels: int | None = None) -> int:
    """The largest image (in pixels) to decode: max_pixels, else $VITOPS_MAX_IMAGE_PIXELS,
    else MAX_IMAGE_PIXELS."""
    if max_pixels is None:
        text = os.environ.get(PIXELS_ENV)
        if not text:
            return MAX_IMAGE_PIXELS
        try:
            max_pixels = int(text)
        except ValueError:
            raise ImageError(
                f"{PIXELS_ENV} must be a whole number of pixels, got {clip_text(repr(text), 40)}"
            ) from None
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ImageError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    return max_pixels


def read_image(path, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file into (Y, X, 3) RGB; the pixel type is kept (uint8, uint16 or
    float32), grayscale and alpha images become RGB.

    The header is checked first: an image with more than `pixel_budget(max_pixels)` pixels is
    refused without being decoded. Every failure is an ImageError naming the file.
    """
    cv2 = _cv2()
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode  # follows symlinks; a loop is ELOOP
    except OSError as e:
        raise ImageError(f"cannot read {path}: {os_reason(e)}") from None
    if stat.S_ISDIR(mode):
        raise ImageError(f"{path} is a directory, not an image file")
    if not stat.S_ISREG(mode):  # a FIFO would block the reader forever, a device never end
        raise ImageError(f"{path} is not a regular file (a FIFO, socket or device), not an image file")
    budget = pixel_budget(max_pixels)
    height, width = header_size(path)
    if height == "bomb":
        claimed = f"{width:,} pixels" if width else "more pixels than Pillow's limit"
        raise ImageError(f"{path}: its header says {claimed}, more than the {budget:,} allowed")
    if height * width > budget:
        raise ImageError(
            f"{path}: its header says {width} x {height} = {height * width:,} pixels, "
            f"more than the {budget:,} allowed (max_pixels= or {PIXELS_ENV} raise it)"
        )
    if height * width == 0:
        raise ImageError(f"{path}: its header says {width} x {height}: an empty image")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise ImageError(f"cannot read {path}: {os_reason(e)}") from None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:
        raise ImageError(f"cannot decode {path}: {clip_text(str(e).strip(), 200)}") from None
    if image is None:
        raise ImageError(f"cannot decode {path} as an image")
    if image.shape[0] * (image.shape[1] if image.ndim > 1 else 1) > budget:
        raise ImageError(f"{path}: decoded to {image.shape[:2]}, more than {budget:,} pixels")
    return to_rgb(image, bgr=True, name=path)


def to_rgb(image, bgr: bool = False, name: str = "image") -> np.ndarray:
    """(Y, X), (Y, X, 1), (Y, X, 3) or (Y, X, 4) -> (Y, X, 3) RGB; the pixel type is kept
    (float16 and float64 become float32). bgr=True for arrays straight from OpenCV."""
    cv2 = _cv2()
    image = np.asarray(image)
    if image.dtype not in PIXEL_TYPES:
        raise ImageError(
            f"{name}: pixel type {image.dtype} is not supported; use uint8 (0-255), "
            "uint16 (0-65535) or float (0-1)"
        )
    if image.dtype in (np.float16, np.float64):
        image = image.astype(np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
        raise ImageError(
            f"{name}: expected a (height, width[, 1, 3 or 4 channels]) image, got shape {image.shape}"
        )
    channels = image.shape[-1]
    try:
        if channels == 1:
            return np.repeat(image, 3, axis=-1)
        if channels == 4:
            return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if bgr else image
    except cv2.error as e:
        raise ImageError(f"{name}: cannot convert to RGB: {clip_text(str(e).strip(), 200)}") from None
