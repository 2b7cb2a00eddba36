"""Known checkpoints by name: download once, verify, convert, cache; later loads are offline.

    path = vitops.hub.fetch("dino_vitb16")   # the converted vitops file in the cache
    model = vitops.load("dino_vitb16")       # the same, loaded

The registry (weights/registry.json, a data file) says where each checkpoint comes from. Hub
files go through huggingface_hub; plain URLs through urllib, with a progress bar. The cache is
VITOPS_HOME (default: the user cache directory, e.g. ~/.cache/vitops):
  models/NAME.safetensors   the converted file
  models/NAME.json          its sha256 and the source's, checked on every load
  checksums.json            source sha256 recorded at first download, checked on re-downloads
Every file is written to a temporary name and moved into place, and a failed download,
checksum or conversion removes what it wrote: the cache never holds a broken file.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path

from .errors import HubError
from .weights import atomic_write, sha256_file

REGISTRY_ENV = "VITOPS_REGISTRY"
HOME_ENV = "VITOPS_HOME"


def home() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("vitops"))


def registry(path=None) -> dict[str, dict]:
    """{name: entry}; from `path`, $VITOPS_REGISTRY, or the registry shipped with vitops."""
    path = path or os.environ.get(REGISTRY_ENV)
    if path:
        text = Path(path).read_text()
    else:
        text = resources.files("vitops._weights").joinpath("registry.json").read_text()
    data = json.loads(text)
    return {m["name"]: m for m in data["models"]}


SHIPPED = ("digits_vit", "digits_deit")


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


def _json_write(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1, sort_keys=True)))


def _progress(total, desc):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=os.environ.get("VITOPS_NO_PROGRESS") == "1")


def _download_url(url: str, dst: Path, timeout: float = 60.0) -> None:
    """Stream url into dst; a short body (dropped connection) is an error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            done = 0
            with open(dst, "wb") as f, _progress(total, os.path.basename(url)) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise HubError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise HubError(f"download of {url} failed (no network, or the connection dropped): {reason}") from None
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
                       f"hub failed (no network?): {type(e).__name__}: {e}") from None


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


def cached_path(name: str) -> Path:
    return home() / "models" / f"{name}.safetensors"


def verify_cached(name: str) -> Path:
    """The cached file, after checking it against the sha256 recorded when it was written."""
    path, record = cached_path(name), cached_path(name).with_suffix(".json")
    try:
        meta = json.loads(record.read_text())
    except (OSError, ValueError):
        meta = None
    if meta is None or sha256_file(path) != meta.get("sha256"):
        for p in (path, record):
            p.unlink(missing_ok=True)
        raise HubError(f"{name}: the cached file {path} is damaged or unrecorded and was removed; "
                       "load again to download it anew")
    return path


def fetch(name: str, registry_path=None) -> Path:
    """Download, verify and convert a registry model once; return its cached vitops file."""
    from .convert import convert

    entries = registry(registry_path)
    if name not in entries:
        raise HubError(f"unknown model {name!r}; `vitops models` lists the registry")
    entry = entries[name]
    dst = cached_path(name)
    if dst.exists():
        return verify_cached(name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    checksums_path = home() / "checksums.json"
    recorded = json.loads(checksums_path.read_text()) if checksums_path.exists() else {}
    with tempfile.TemporaryDirectory(dir=home(), prefix=".download-") as tmp:
        source = entry["source"]
        if "hf_repo" in source:
            src = _download_hf(source, Path(tmp))
        elif "url" in source:
            src = Path(tmp) / os.path.basename(source["url"].split("?")[0])
            _download_url(source["url"], src)
        else:
            raise HubError(f"{name}: registry entry has no url or hf_repo")
        digest = sha256_file(src)
        _check_source(entry, digest, recorded)
        config = convert(src, dst, arch=entry.get("arch"), format=entry.get("format"))
    _json_write(dst.with_suffix(".json"), {"sha256": sha256_file(dst), "source_sha256": digest,
                                           "name": name, "arch": config.name})
    if name not in recorded:
        recorded[name] = digest
        _json_write(checksums_path, recorded)
    return dst

