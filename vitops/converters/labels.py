"""Class names for a converted model (metadata key "labels", a JSON list; see vitops.io.weight_file).

Sources, first found wins: the caller's (--labels FILE, one name per line), the Hugging Face
config's id2label (unless it is transformers' placeholder LABEL_0, LABEL_1, ...), and for a
1000-class head of a timm, DeiT or Google checkpoint the ImageNet-1k names vitops ships
(vitops/_data/imagenet1k_labels.json, made by tools/make_imagenet_labels.py from timm's class
list and WordNet lemmas). ImageNet-21k heads (21,843 or 21,841 classes) get names only when
timm is installed at conversion time (its synset and lemma files); vitops never needs timm
to run.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from importlib import resources

from ..errors import ConversionError, capped, clip
from ..io.bounded_json import read_limited
from ..io.weight_file import MAX_LABEL_CHARS

IMAGENET1K_FILE = "imagenet1k_labels.json"
# timm's names for ImageNet-21k subsets by class count (timm.data.imagenet_info).
IMAGENET21K_SUBSETS = {21843: "imagenet-21k-goog", 21841: "imagenet-22k"}
# The formats whose 1000-class heads are ImageNet-1k's, in its standard (sorted synset) order.
IMAGENET_FORMATS = ("timm", "deit", "npz")
MAX_LABELS_FILE_BYTES = 8 << 20
_PLACEHOLDER = re.compile(r"LABEL_(\d+)")


@functools.lru_cache(maxsize=1)
def imagenet1k_labels() -> tuple[str, ...]:
    """ImageNet-1k's 1000 class names, index = class (the file shipped with vitops)."""
    data = json.loads(resources.files("vitops._data").joinpath(IMAGENET1K_FILE).read_text("utf-8"))
    return tuple(data["labels"])


def imagenet21k_labels(num_classes: int) -> list[str] | None:
    """ImageNet-21k class names from timm's info files, when timm is installed; else None."""
    subset = IMAGENET21K_SUBSETS.get(num_classes)
    if subset is None:
        return None
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return None
    names = ImageNetInfo(subset).label_descriptions()
    return list(names) if len(names) == num_classes else None


def default_labels(num_classes: int, fmt: str) -> list[str] | None:
    """The names a head of this size from this format has, when known."""
    if fmt not in IMAGENET_FORMATS:
        return None
    if num_classes == 1000:
        return list(imagenet1k_labels())
    return imagenet21k_labels(num_classes)


def read_labels_file(path) -> list[str]:
    """One class name per line (UTF-8; a final newline is optional), index = line number."""
    path = os.fspath(path)
    data = read_limited(path, MAX_LABELS_FILE_BYTES, ConversionError, f"the labels file {path}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: not UTF-8 text: {e}") from None
    names = text.splitlines()
    if not names:
        raise ConversionError(f"{path}: no class names (expected one per line)")
    return check_labels(names, path)


def check_labels(names, source: str) -> list[str]:
    """A list of class names, each a string of at most MAX_LABEL_CHARS."""
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        raise ConversionError(f"{source}: labels must be a list of class names, got {clip(names)}")
    names = list(names)
    bad = [i for i, s in enumerate(names) if not isinstance(s, str) or len(s) > MAX_LABEL_CHARS]
    if bad:
        raise ConversionError(
            f"{source}: class name(s) at {capped(bad)} are not strings of at most "
            f"{MAX_LABEL_CHARS} characters"
        )
    return names


def hf_labels(config: Mapping, source: str) -> list[str] | None:
    """A Hugging Face config's id2label as a list, or None when absent or the placeholder."""
    id2label = config.get("id2label")
    if id2label is None:
        return None
    if not isinstance(id2label, dict):
        raise ConversionError(f"{source}: id2label must be an object {{index: name}}, got {clip(id2label)}")
    try:
        indices = sorted(int(k) for k in id2label)
    except ValueError:
        raise ConversionError(
            f"{source}: id2label keys must be class indices, got {capped(sorted(id2label))}"
        ) from None
    if indices != list(range(len(indices))):
        raise ConversionError(f"{source}: id2label indices are not 0..{len(indices) - 1}")
    names = [id2label[k] for k in sorted(id2label, key=int)]
    names = check_labels(names, f"{source} id2label")
    if all((m := _PLACEHOLDER.fullmatch(n)) and int(m.group(1)) == i for i, n in enumerate(names)):
        return None  # transformers' default: no names at all
    return names
