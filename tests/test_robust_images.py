"""Images: the header is read before any pixel is decoded, the crop is computed without
enlarging the whole image, the value range comes from the pixel type, and every failure is an
ImageError naming the file."""

import math
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from sklearn.datasets import load_sample_images

from vitops.errors import ImageError
from vitops.io.image_file import MAX_IMAGE_PIXELS, PIXELS_ENV, read_image
from vitops.preprocess import Preprocessing, prepare, preprocess, resize_and_crop


def png_header_only(width, height):
    """A PNG whose header claims width x height and whose data is a few bytes."""

    def chunk(kind, payload):
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def test_a_header_claiming_huge_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(100_000, 100_000))
    assert path.stat().st_size < 100
    with pytest.raises(
        ImageError, match=r"bomb.png: its header says 10,000,000,000 pixels, more than the 89,478,485"
    ):
        read_image(path)  # was cv2.error from OpenCV's own limit
    path.write_bytes(png_header_only(12_000, 12_000))  # below Pillow's own limit: vitops' budget
    with pytest.raises(ImageError, match=r"12000 x 12000 = 144,000,000 pixels, more than the 89,478,485"):
        read_image(path)


@pytest.mark.parametrize(
    "ext,dtype,channels",
    [
        (".tiff", np.float32, 3),
        (".tiff", np.float64, 3),
        (".tiff", np.uint16, 4),
        (".pfm", np.float32, 3),
        (".pam", np.uint8, 3),
        (".pgm", np.uint16, 1),
        (".hdr", np.float32, 3),
        (".png", np.uint8, 3),
        (".jpg", np.uint8, 3),
        (".webp", np.uint8, 3),
    ],
)
def test_header_size_of_every_format_opencv_writes(tmp_path, ext, dtype, channels):
    from vitops.io.image_header import header_size

    scale = 1 if np.dtype(dtype).kind == "f" else np.iinfo(dtype).max
    image = (np.random.default_rng(0).random((13, 21, channels)) * scale).astype(dtype)
    path = tmp_path / f"x{ext}"
    assert cv2.imwrite(str(path), image if channels > 1 else image[..., 0])
    assert header_size(path) == (13, 21)  # Pillow cannot open the first four, PFM, PAM nor HDR
    assert read_image(path).shape == (13, 21, 3)


def test_the_pixel_budget_is_the_callers(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.zeros((10, 300, 3), np.uint8))
    with pytest.raises(ImageError, match="3,000 pixels, more than the 2,000 allowed"):
        read_image(path, max_pixels=2000)
    monkeypatch.setenv(PIXELS_ENV, "2000")
    with pytest.raises(ImageError, match="more than the 2,000"):
        preprocess([path], size=32)
    assert read_image(path, max_pixels=3000).shape == (10, 300, 3)
    monkeypatch.setenv(PIXELS_ENV, "lots")
    with pytest.raises(ImageError, match=PIXELS_ENV):
        read_image(path)
    assert MAX_IMAGE_PIXELS == 89_478_485


def test_extreme_aspect_ratio_costs_the_crop_not_the_enlarged_image(tmp_path):
    # 141 bytes of PNG, 1 x 20000 pixels: enlarging the whole image to a 256-pixel short side
    # took 4.6 GB and 24 s. Run under an address-space cap of 300 MB beyond start-up.
    path = tmp_path / "line.png"
    cv2.imwrite(str(path), np.zeros((1, 20000, 3), np.uint8))
    code = (
        "import resource, sys\n"
        "from vitops.preprocess import preprocess\n"
        "preprocess([sys.argv[1]], size=8)\n"  # imports and warm-up
        "size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (300 << 20),) * 2)\n"
        "x = preprocess([sys.argv[1]], size=224)\n"
        "assert x.shape == (1, 224, 224, 3), x.shape\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def old_resize_and_crop(image, size, crop_pct):
    """Resize the whole image, then crop (the reference), with timm's eval geometry: short side
    floor(size / crop_pct), long side truncated (torchvision's Resize), crop corner rounded
    (torchvision's CenterCrop)."""
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    short = math.floor(min(th, tw) / crop_pct)
    nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    nh, nw = max(th, nh), max(tw, nw)
    interp = cv2.INTER_AREA if short < min(h, w) else cv2.INTER_CUBIC
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
    return resized[top : top + th, left : left + tw]


@pytest.mark.parametrize(
    "shape", [(427, 640), (100, 150), (150, 100), (37, 211), (8, 300), (1, 50), (224, 224)]
)
@pytest.mark.parametrize("size,crop_pct", [(224, 0.875), (224, 1.0), ((224, 320), 0.9), (32, 0.9)])
def test_crop_then_resize_equals_resize_then_crop(shape, size, crop_pct):
    photo = load_sample_images().images[0]
    image = cv2.resize(photo, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    for src in (image, image.astype(np.float32) / 255):
        new = resize_and_crop(src, size, crop_pct).astype(np.float64)
        old = old_resize_and_crop(src, size, crop_pct).astype(np.float64)
        scale = 255 if src.dtype == np.float32 else 1
        # OpenCV's warp rounds source coordinates to 1/32 pixel; one grey level at most
        assert new.shape == old.shape
        assert np.abs(new - old).max() * scale <= 1.0 + 1e-3


def test_float_tiff_in_unit_range_is_not_black(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.random((40, 40, 3)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "f.tiff"), image[..., ::-1])  # OpenCV writes BGR
    rgb = read_image(tmp_path / "f.tiff")
    assert rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb, image)
    p = Preprocessing(size=40, crop_pct=1.0, interpolation="bicubic", mean=(0, 0, 0), std=(1, 1, 1))
    x = preprocess([tmp_path / "f.tiff"], preprocessing=p)[0]
    np.testing.assert_allclose(x, image, atol=1e-6)  # was /255: nearly black


def test_value_range_comes_from_the_pixel_type(tmp_path):
    p = Preprocessing(size=8, crop_pct=1.0, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    u8 = np.full((8, 8, 3), 51, np.uint8)
    u16 = np.full((8, 8, 3), 13107, np.uint16)  # 0.2 of 65535
    f32 = np.full((8, 8, 3), 0.2, np.float32)
    for image in (u8, u16, f32):
        np.testing.assert_allclose(prepare(image, p), 0.2, atol=1e-6)
    cv2.imwrite(str(tmp_path / "d.png"), u16)  # 16-bit PNG: kept 16-bit, not shifted to 8
    assert read_image(tmp_path / "d.png").dtype == np.uint16
    with pytest.raises(ImageError, match=r"\[0, 1\].*divided by 255"):
        prepare(f32 * 255, p)
    with pytest.raises(ImageError, match="NaN or infinite"):
        prepare(np.full((8, 8, 3), np.nan, np.float32), p)
    with pytest.raises(ImageError, match="pixel type int64"):
        prepare(np.zeros((8, 8, 3), np.int64), p)


def test_every_image_failure_is_an_image_error_naming_the_file(tmp_path):
    cases = {
        "empty.png": b"",
        "junk.jpg": os.urandom(300),
        "cut.png": cv2.imencode(".png", np.zeros((50, 50, 3), np.uint8))[1].tobytes()[:60],
        "zero.png": png_header_only(0, 0),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_empty_arrays_are_image_errors():
    p = Preprocessing.for_family("vit", 32)
    for shape in [(0, 0, 3), (0, 10), (10, 0, 3), (5, 5, 2)]:
        with pytest.raises(ImageError, match=r"expected a \(height, width"):
            prepare(np.zeros(shape, np.uint8), p)
