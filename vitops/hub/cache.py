"""Known checkpoints by name: download once, verify, convert, cache; later loads are offline.

    path = vitops.hub.fetch("dino_vitb16")   # the converted vitops file in the cache
    model = vitops.load("dino_vitb16")       # the same, loaded

The registry (vitops/_data/registry.json, a data file; see vitops.hub.registry) says where each
checkpoint comes from. Hub files go through huggingface_hub; plain URLs through urllib, with a
progress bar. The cache is VITOPS_HOME (default: the user cache directory, e.g.
~/.cache/vitops; '~' is expanded):
  models/NAME.safetensors   the converted file (with the registry's preprocessing)
  models/NAME.json          its sha256 and the source's, checked on every load
  checksums.json            source sha256 recorded at first download, checked on re-downloads
A download lives in a temporary folder inside the cache (see vitops.io.temporary), removed on any
exit the process sees and swept by the next fetch after a kill; files are moved into place
only when complete and verified: the cache never holds a broken file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import HubError, clip, os_reason
from ..io.bounded_json import parse_file
from ..io.temporary import atomic_output, sweep, temp_directory
from ..io.weight_file import sha256_file
from .download import download_hf, download_url
from .registry import REGISTRY_ENV, is_safe_name, read_registry, url_filename

HOME_ENV = "VITOPS_HOME"


def home() -> Path:
    """The cache folder: $VITOPS_HOME ('~' expanded, made absolute) or the user cache."""
    if os.environ.get(HOME_ENV):
        return Path(os.path.abspath(os.path.expanduser(os.environ[HOME_ENV])))
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vitops"))


def registry(path=None) -> dict[str, dict]:
    """{name: entry}; from `path`, $VITOPS_REGISTRY, or the registry shipped with vitops."""
    return read_registry(path)


def _inside_home(path: Path) -> Path:
    """`path`, after checking that it stays inside the cache folder (no '..', no absolute
    name escapes it). Symlinks the user made inside the cache are theirs and followed."""
    root = os.path.abspath(home())
    full = os.path.abspath(path)
    if os.path.commonpath([root, full]) != root:
        raise HubError(f"refusing to use {full}: outside the cache {root}")
    return Path(full)


def cached_path(name: str) -> Path:
    """Where registry model `name`'s converted file is cached."""
    if not is_safe_name(name):
        raise HubError(f"{clip(name)} is not a registry model name (letters, digits, '.', '_', '-')")
    return _inside_home(home() / "models" / f"{name}.safetensors")


def _json_write(path: Path, obj) -> None:
    with atomic_output(_inside_home(path), HubError) as tmp:
        try:
            Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True))
        except OSError as e:
            raise HubError(f"cannot write {path}: {os_reason(e)}") from None


def _check_source(entry: dict, digest: str, recorded: dict) -> None:
    name = entry["name"]
    expected = entry.get("sha256")
    if expected and digest != expected:
        raise HubError(
            f"{name}: checksum mismatch: the registry states sha256 {expected}, the "
            f"download has {digest}; nothing was kept"
        )
    prefix = entry.get("sha256_prefix")
    if prefix and not digest.startswith(prefix):
        raise HubError(
            f"{name}: checksum mismatch: the release file name states sha256 prefix "
            f"{prefix}, the download has {digest}; nothing was kept"
        )
    if recorded.get(name) and recorded[name] != digest:
        raise HubError(
            f"{name}: checksum mismatch: the first download had sha256 {recorded[name]}, "
            f"this one has {digest}; nothing was kept"
        )


def _read_checksums(path: Path) -> dict:
    """checksums.json: {name: sha256}. A damaged one is an error, not silently reset: it holds
    the checksums later downloads are compared with."""
    if not path.exists():
        return {}
    recorded = parse_file(path, HubError, what=f"the cache index {path}")
    bad = [k for k, v in recorded.items() if not (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v))]
    if bad:
        raise HubError(
            f"the cache index {path} is damaged (entries {clip(bad)} are not sha256 "
            "digests); remove it and the checksums are recorded again at the next downloads"
        )
    return recorded


def verify_cached(name: str) -> Path:
    """The cached file, after checking it against the sha256 recorded when it was written."""
    path = cached_path(name)
    record = path.with_suffix(".json")
    try:
        meta = parse_file(record, HubError)
        digest = sha256_file(path)
    except (OSError, HubError):
        meta = digest = None
    if meta is None or digest != meta.get("sha256"):
        try:
            for p in (path, record):
                p.unlink(missing_ok=True)
        except OSError as e:
            raise HubError(
                f"{name}: the cached file {path} is damaged or unrecorded and cannot be "
                f"removed: {os_reason(e)}"
            ) from None
        raise HubError(
            f"{name}: the cached file {path} is damaged or unrecorded and was removed; "
            "load again to download it anew"
        )
    return path


def fetch(name: str, registry_path=None) -> Path:
    """Download, verify and convert a registry model once; return its cached vitops file.

    The registry's preprocessing is recorded in the file. Leftovers of killed downloads in
    the cache are swept first.
    """
    from ..converters import convert

    entries = registry(registry_path)
    if name not in entries:
        raise HubError(f"unknown model {clip(name)}; `vitops models` lists the registry")
    entry = entries[name]
    dst = cached_path(name)
    if dst.exists():
        return verify_cached(name)
    checksums_path = _inside_home(home() / "checksums.json")
    recorded = _read_checksums(checksums_path)
    sweep(dst.parent)
    with temp_directory(home(), "download", HubError) as tmp:
        source = entry["source"]
        if "hf_repo" in source:
            src = download_hf(source, tmp)
        else:
            src = tmp / url_filename(source["url"])
            download_url(source["url"], src)
        digest = sha256_file(src)
        _check_source(entry, digest, recorded)
        converted = tmp / dst.name
        config = convert(
            src,
            converted,
            arch=entry.get("arch"),
            format=entry.get("format"),
            preprocessing=entry.get("preprocessing"),
        )
        # The record first, then the file: a kill in between leaves a record without a file,
        # which the next fetch replaces, never a file without a record.
        _json_write(
            dst.with_suffix(".json"),
            {"sha256": sha256_file(converted), "source_sha256": digest, "name": name, "arch": config.name},
        )
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(converted, dst)
        except OSError as e:
            raise HubError(f"cannot write {dst}: {os_reason(e)}") from None
    if name not in recorded:
        recorded[name] = digest
        _json_write(checksums_path, recorded)
    return dst


__all__ = [
    "HubError",
    "fetch",
    "registry",
    "home",
    "cached_path",
    "verify_cached",
    "REGISTRY_ENV",
    "HOME_ENV",
]
