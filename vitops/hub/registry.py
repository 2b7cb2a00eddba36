"""The registry of known checkpoints (vitops/_data/registry.json, or $VITOPS_REGISTRY): read and
checked, every entry, before anything is downloaded.

Names from a registry become file names in the cache, so they match one fixed pattern
(`NAME`: letters, digits, '.', '_', '-'; no separator, no '..'); so do the file names of the
sources (a URL's last segment, a hub file's path segments).
"""

from __future__ import annotations

import os
import re
from importlib import resources

from ..errors import ConfigError, HubError, capped, clip
from ..io.bounded_json import parse_object, read_limited

REGISTRY_ENV = "VITOPS_REGISTRY"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Checkpoint files vitops converts, by extension (convert._io reads them by extension).
SOURCE_EXTENSIONS = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".npz")
MAX_REGISTRY_CHARS = 4 << 20
# The published scores an entry may quote (key in "published" -> how `vitops models` names it):
# supervised top-1, self-supervised k-NN and linear probes, zero-shot with the text tower
# (CLIP, SigLIP), linear probes on the ImageNet-ReaL labels (DINOv3's model card).
PUBLISHED_SCORES = {
    "imagenet_top1": "top-1",
    "imagenet_knn": "k-NN",
    "imagenet_linear": "linear",
    "imagenet_zeroshot": "zero-shot",
    "imagenet_real_linear": "ReaL linear",
}


def is_safe_name(name) -> bool:
    """A name that can be a file name as it is: the NAME pattern, and no '..'."""
    return isinstance(name, str) and NAME.fullmatch(name) is not None and ".." not in name


def url_filename(url: str) -> str:
    """The file name a URL's last path segment gives (query and fragment dropped)."""
    return url.split("?", 1)[0].split("#", 1)[0].rstrip().rsplit("/", 1)[-1]


def entry_problems(entry) -> list[str]:
    """Every problem of one registry entry, as readable lines."""
    from ..converters import FORMATS
    from ..core.config import FAMILIES
    from ..core.variants import get_config
    from ..preprocess import Preprocessing

    if not isinstance(entry, dict):
        return [f"an entry is {type(entry).__name__}, not an object"]
    problems = []
    if not is_safe_name(entry.get("name")):
        problems.append(
            f"name {clip(entry.get('name'))} is not a plain name (letters, digits, '.', "
            "'_', '-'; no separators, no '..')"
        )
    arch = entry.get("arch")
    if arch is not None:
        try:
            get_config(arch)
        except ConfigError as e:
            problems.append(f"arch: {e}")
    if entry.get("family") is not None and entry.get("family") not in FAMILIES:
        problems.append(f"family {clip(entry.get('family'))} is not one of {', '.join(FAMILIES)}")
    if entry.get("format") is not None and entry.get("format") not in FORMATS:
        problems.append(f"format {clip(entry.get('format'))} is not one of {', '.join(FORMATS)}")
    for key, length in (("sha256", 64), ("sha256_prefix", None)):
        value = entry.get(key)
        if value is not None and not (
            isinstance(value, str)
            and re.fullmatch(r"[0-9a-f]+", value)
            and (length is None or len(value) == length)
        ):
            problems.append(f"{key} {clip(value)} is not a lowercase hex sha256")
    source = entry.get("source")
    if not isinstance(source, dict):
        problems.append("source must be an object with a url, or an hf_repo and a filename")
    elif "url" in source:
        url = source["url"]
        if not (isinstance(url, str) and re.match(r"https?://", url)):
            problems.append(f"source url {clip(url)} is not an http(s) URL")
        elif not (is_safe_name(url_filename(url)) and url_filename(url).endswith(SOURCE_EXTENSIONS)):
            problems.append(
                f"source url {clip(url)} does not end in a plain checkpoint file name "
                f"({', '.join(SOURCE_EXTENSIONS)})"
            )
    elif "hf_repo" in source:
        repo, filename = source.get("hf_repo"), source.get("filename")
        if not (
            isinstance(repo, str) and all(is_safe_name(p) for p in repo.split("/")) and repo.count("/") == 1
        ):
            problems.append(f"source hf_repo {clip(repo)} is not OWNER/NAME")
        if not (
            isinstance(filename, str)
            and all(is_safe_name(p) for p in filename.split("/"))
            and filename.endswith(SOURCE_EXTENSIONS)
        ):
            problems.append(f"source filename {clip(filename)} is not a plain checkpoint file path")
    else:
        problems.append("source has neither a url nor an hf_repo")
    pre = entry.get("preprocessing")
    if pre is not None:
        if not isinstance(pre, dict):
            problems.append("preprocessing must be an object")
        else:
            family = entry.get("family") if entry.get("family") in FAMILIES else "vit"
            try:  # fields it lacks come from the family's defaults, as at conversion
                Preprocessing.from_mapping(pre, Preprocessing.for_family(family), source="preprocessing")
            except ConfigError as e:
                problems.append(str(e))
    return problems


def read_registry(path=None) -> dict[str, dict]:
    """{name: entry} from `path`, $VITOPS_REGISTRY, or the registry shipped with vitops; every
    entry checked. A registry that cannot be read or has a bad entry raises HubError naming
    the file and the entries."""
    path = path or os.environ.get(REGISTRY_ENV)
    if path:
        where = os.fspath(path)
        text = read_limited(where, MAX_REGISTRY_CHARS, HubError, f"the registry {where}")
    else:
        where = "vitops' registry.json"
        text = resources.files("vitops._data").joinpath("registry.json").read_bytes()
    data = parse_object(text, where, HubError, MAX_REGISTRY_CHARS)
    models = data.get("models")
    if not isinstance(models, list):
        raise HubError(f"{where}: no list of models")
    problems, entries = [], {}
    for i, entry in enumerate(models):
        label = entry.get("name") if isinstance(entry, dict) and is_safe_name(entry.get("name")) else f"#{i}"
        problems.extend(f"{label}: {p}" for p in entry_problems(entry))
        if isinstance(entry, dict) and label in entries:
            problems.append(f"{label}: listed twice")
        entries[label] = entry
    if problems:
        raise HubError(f"{where}: bad registry entries: {capped(problems, 8, '; ')}")
    return entries
