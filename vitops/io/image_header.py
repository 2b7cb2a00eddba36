"""An image's size from its file header, without decoding a pixel.

OpenCV has no call for this. Pillow's lazy `Image.open` reads only the header of the formats
it knows; for the formats OpenCV decodes and Pillow cannot open (float and 3-channel 32/64-bit
TIFF, PFM, PAM, Radiance HDR) the header is parsed here, from the formats' specifications:
TIFF 6.0 (Adobe, 1992; BigTIFF's 8-byte variant), Netpbm's PNM/PAM/PFM, Radiance's RGBE.
"""

from __future__ import annotations

import re
import struct
import warnings

from ..errors import ImageError, clip_text, os_reason
from .signals import reraise_signal

_PNM_MAGIC = re.compile(rb"^P[1-7]\s|^P[Ff]\s")
_HEADER_BYTES = 1 << 16  # text headers (PNM comments, HDR variables) beyond this are not images
_TIFF_WIDTH, _TIFF_LENGTH = 256, 257
_MAX_TIFF_ENTRIES = 4096


def _tiff(f, head: bytes):
    order = {b"II": "<", b"MM": ">"}[head[:2]]
    version = struct.unpack(order + "H", head[2:4])[0]
    if version == 42:  # classic: 4-byte offsets, 12-byte entries
        (offset,) = struct.unpack(order + "I", head[4:8])
        count_fmt, entry_fmt, entry_size = "H", "HHI4s", 12
    elif version == 43:  # BigTIFF: 8-byte offsets, 20-byte entries
        (offset,) = struct.unpack(order + "Q", head[8:16])
        count_fmt, entry_fmt, entry_size = "Q", "HHQ8s", 20
    else:
        return None
    f.seek(offset)
    raw = f.read(struct.calcsize(count_fmt))
    if len(raw) < struct.calcsize(count_fmt):
        return None
    (count,) = struct.unpack(order + count_fmt, raw)
    if not 0 < count <= _MAX_TIFF_ENTRIES:
        return None
    table = f.read(count * entry_size)
    size = {}
    for i in range(len(table) // entry_size):
        tag, kind, _, value = struct.unpack(order + entry_fmt, table[i * entry_size : (i + 1) * entry_size])
        if tag in (_TIFF_WIDTH, _TIFF_LENGTH):
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)  # SHORT, LONG, LONG8
            if fmt is None:
                return None
            size[tag] = struct.unpack(order + fmt, value[: struct.calcsize(fmt)])[0]
    if len(size) != 2:
        return None
    return size[_TIFF_LENGTH], size[_TIFF_WIDTH]


def _pnm(head: bytes):
    text = re.sub(rb"#[^\n]*", b" ", head)  # comments
    if text.startswith(b"P7"):  # PAM: "WIDTH w" and "HEIGHT h" lines before ENDHDR
        w, h = re.search(rb"\bWIDTH\s+(\d+)", text), re.search(rb"\bHEIGHT\s+(\d+)", text)
        return (int(h.group(1)), int(w.group(1))) if w and h else None
    tokens = text.split()
    if len(tokens) < 3 or not (tokens[1].isdigit() and tokens[2].isdigit()):
        return None
    return int(tokens[2]), int(tokens[1])


def _radiance(head: bytes):
    # header lines, a blank line, then the resolution: "-Y <rows> +X <columns>" (or rotated)
    _, _, rest = head.partition(b"\n\n")
    m = re.match(rb"\s*([-+])([XY])\s+(\d+)\s+([-+])([XY])\s+(\d+)", rest)
    if not m or m.group(2) == m.group(5):
        return None
    first, second = int(m.group(3)), int(m.group(6))
    return (first, second) if m.group(2) == b"Y" else (second, first)


def _pillow(path):
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with matplotlib
        raise ImageError("reading images needs Pillow (for the size check): pip install pillow") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bomb warnings (the caller's budget decides), corrupt EXIF
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Image.DecompressionBombError as e:
            # Above Pillow's own limit (2 x PIL.Image.MAX_IMAGE_PIXELS): it says the size
            m = re.search(r"\((\d+) pixels\)", str(e))
            return ("bomb", int(m.group(1)) if m else None)
        except OSError as e:
            if e.errno is not None:
                raise ImageError(f"cannot read {path}: {os_reason(e)}") from None
            raise ImageError(f"cannot read {path} as an image: {clip_text(str(e), 200)}") from None
        except Exception as e:  # noqa: BLE001 - a corrupt header can raise anything in a plugin
            reraise_signal(e)
            raise ImageError(
                f"cannot read the image header of {path}: {type(e).__name__}: {clip_text(str(e), 200)}"
            ) from None
    return int(height), int(width)


def header_size(path):
    """(height, width) from an image file's header, or ("bomb", pixels) when Pillow refuses a
    header above its own limit. Raises ImageError when the header cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
            if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
                size = _tiff(f, head)
            elif _PNM_MAGIC.match(head):
                size = _pnm(head)
            elif head.startswith((b"#?RADIANCE", b"#?RGBE")):
                size = _radiance(head)
            else:
                size = "pillow"
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory, not an image file") from None
    except OSError as e:
        raise ImageError(f"cannot read {path}: {os_reason(e)}") from None
    except struct.error:
        size = None
    if size == "pillow":
        return _pillow(path)
    if size is None:
        raise ImageError(f"cannot read the image header of {path}: malformed")
    return size
