"""Known checkpoints by name: download once, verify, convert, cache; later loads are offline.

    path = vitops.hub.fetch("dino_vitb16")   # the converted vitops file in the cache
    model = vitops.load("dino_vitb16")       # the same, loaded

The registry (weights/registry.json, a data file; see vitops.registry) says where each
checkpoint comes from. Hub files go through huggingface_hub; plain URLs through urllib, with a
progress bar. The cache is VITOPS_HOME (default: the user cache directory, e.g.
~/.cache/vitops; '~' is expanded):
  models/NAME.safetensors   the converted file (with the registry's preprocessing)
  models/NAME.json          its sha256 and the source's, checked on every load
  checksums.json            source sha256 recorded at first download, checked on re-downloads
A download lives in a temporary folder inside the cache (see vitops._cleanup), removed on any
exit the process sees and swept by the next fetch after a kill; files are moved into place
only when complete and verified: the cache never holds a broken file.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from ._cleanup import atomic_output, sweep, temp_directory
from ._json import parse_object
from .errors import HubError, clip, os_reason
from .registry import REGISTRY_ENV, is_safe_name, read_registry, url_filename
from .weights import sha256_file

HOME_ENV = "VITOPS_HOME"
SHIPPED = ("digits_vit", "digits_deit")


def home() -> Path:
    """The cache folder: $VITOPS_HOME ('~' expanded, made absolute) or the user cache."""
    if os.environ.get(HOME_ENV):
        return Path(os.path.abspath(os.path.expanduser(os.environ[HOME_ENV])))
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vitops"))


def registry(path=None) -> dict[str, dict]:
    """{name: entry}; from `path`, $VITOPS_REGISTRY, or the registry shipped with vitops."""
    return read_registry(path)


def shipped_path(name: str):
    """The file of a model shipped inside vitops (trained by weights/train_digits.py), or None."""
    if name not in SHIPPED:
        return None
    path = resources.files("vitops._weights").joinpath(f"{name}.safetensors")
    return Path(str(path)) if path.is_file() else None


def shipped_samples() -> list[Path]:
    """The sample images shipped with vitops (held-out digits), for `vitops analyze`."""
    folder = resources.files("vitops._weights").joinpath("samples")
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".png")) if folder.is_dir() else []


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


def _progress(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=os.environ.get("VITOPS_NO_PROGRESS") == "1")


def _download_url(url: str, dst: Path, timeout: float = 60.0) -> None:
    """Stream url into dst; a short body (dropped connection) is an error, and so is a write
    that fails (a full disk), named as such."""
    try:
        out = open(dst, "wb")
    except OSError as e:
        raise HubError(f"cannot write {dst}: {os_reason(e)}") from None
    done, total = 0, None
    with out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                with _progress(total, os.path.basename(str(dst))) as bar:
                    while chunk := response.read(1 << 20):
                        try:
                            out.write(chunk)
                        except OSError as e:
                            raise HubError(f"cannot write {dst}: {os_reason(e)}") from None
                        done += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            raise HubError(f"download of {url} failed: HTTP {e.code} {clip(e.reason)}") from None
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise HubError(f"download of {url} failed (no network, or the connection dropped): "
                           f"{clip(str(reason), 200)}") from None
        try:
            out.flush()
        except OSError as e:
            raise HubError(f"cannot write {dst}: {os_reason(e)}") from None
    if total is not None and done != total:
        raise HubError(f"download of {url} was interrupted: {done} of {total} bytes arrived")


def _download_hf(source: dict, workdir: Path) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a dependency of vitops
        raise HubError("downloading from the Hugging Face hub needs huggingface_hub") from e
    try:
        return Path(hf_hub_download(repo_id=source["hf_repo"], filename=source["filename"],
                                    revision=source.get("revision"), cache_dir=workdir))
    except Exception as e:  # noqa: BLE001 - network, auth, missing file: all end here
        raise HubError(f"download of {source['hf_repo']}/{source['filename']} from the Hugging Face "
                       f"hub failed (no network?): {type(e).__name__}: {clip(str(e), 300)}") from None


def _check_source(entry: dict, digest: str, recorded: dict) -> None:
    name = entry["name"]
    expected = entry.get("sha256")
    if expected and digest != expected:
        raise HubError(f"{name}: checksum mismatch: the registry states sha256 {expected}, the "
                       f"download has {digest}; nothing was kept")
    prefix = entry.get("sha256_prefix")
    if prefix and not digest.startswith(prefix):
        raise HubError(f"{name}: checksum mismatch: the release file name states sha256 prefix "
                       f"{prefix}, the download has {digest}; nothing was kept")
    if recorded.get(name) and recorded[name] != digest:
        raise HubError(f"{name}: checksum mismatch: the first download had sha256 {recorded[name]}, "
                       f"this one has {digest}; nothing was kept")


def _read_checksums(path: Path) -> dict:
    """checksums.json: {name: sha256}. A damaged one is an error, not silently reset: it holds
    the checksums later downloads are compared with."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise HubError(f"cannot read the cache index {path}: {os_reason(e)}") from None
    recorded = parse_object(text, f"the cache index {path}", HubError)
    bad = [k for k, v in recorded.items() if not (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v))]
    if bad:
        raise HubError(f"the cache index {path} is damaged (entries {clip(bad)} are not sha256 "
                       "digests); remove it and the checksums are recorded again at the next downloads")
    return recorded


def verify_cached(name: str) -> Path:
    """The cached file, after checking it against the sha256 recorded when it was written."""
    path = cached_path(name)
    record = path.with_suffix(".json")
    try:
        meta = parse_object(record.read_bytes(), str(record), HubError)
        digest = sha256_file(path)
    except (OSError, HubError):
        meta = digest = None
    if meta is None or digest != meta.get("sha256"):
        try:
            for p in (path, record):
                p.unlink(missing_ok=True)
        except OSError as e:
            raise HubError(f"{name}: the cached file {path} is damaged or unrecorded and cannot be "
                           f"removed: {os_reason(e)}") from None
        raise HubError(f"{name}: the cached file {path} is damaged or unrecorded and was removed; "
                       "load again to download it anew")
    return path


def fetch(name: str, registry_path=None) -> Path:
    """Download, verify and convert a registry model once; return its cached vitops file.

    The registry's preprocessing is recorded in the file. Leftovers of killed downloads in
    the cache are swept first.
    """
    from .convert import convert

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
            src = _download_hf(source, tmp)
        else:
            src = tmp / url_filename(source["url"])
            _download_url(source["url"], src)
        digest = sha256_file(src)
        _check_source(entry, digest, recorded)
        converted = tmp / dst.name
        config = convert(src, converted, arch=entry.get("arch"), format=entry.get("format"),
                         preprocessing=entry.get("preprocessing"))
        # The record first, then the file: a kill in between leaves a record without a file,
        # which the next fetch replaces, never a file without a record.
        _json_write(dst.with_suffix(".json"), {"sha256": sha256_file(converted), "source_sha256": digest,
                                               "name": name, "arch": config.name})
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(converted, dst)
        except OSError as e:
            raise HubError(f"cannot write {dst}: {os_reason(e)}") from None
    if name not in recorded:
        recorded[name] = digest
        _json_write(checksums_path, recorded)
    return dst


__all__ = ["HubError", "fetch", "registry", "home", "cached_path", "verify_cached", "shipped_path",
           "shipped_samples", "REGISTRY_ENV", "HOME_ENV", "SHIPPED"]
