"""Downloads into a folder the caller owns: plain URLs through urllib with a progress bar, hub
files through huggingface_hub. Every failure is a HubError that names the source and the reason.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import HubError, clip, os_reason
from ..io.signals import reraise_signal

_MIB = 1 << 20


def _progress(total_bytes):
    """Keras' progress bar (the one `vitops analyze` shows too), counting MiB;
    VITOPS_NO_PROGRESS=1 silences it."""
    import keras

    target = None if total_bytes is None else max(total_bytes / _MIB, 1e-9)
    quiet = os.environ.get("VITOPS_NO_PROGRESS") == "1"
    return keras.utils.Progbar(target, unit_name="MiB", verbose=0 if quiet else 1)


def download_url(url: str, dst: Path, timeout: float = 60.0) -> None:
    """Stream url into dst; a short body (dropped connection) is an error, and so is a write
    that fails (a full disk), named as such."""
    try:
        out = open(dst, "wb")  # noqa: SIM115 - closed by the `with out` below; only the open is guarded here
    except OSError as e:
        raise HubError(f"cannot write {dst}: {os_reason(e)}") from None
    done, total = 0, None
    with out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                total = response.headers.get("Content-Length")
                total = int(total) if total and total.isdigit() else None
                bar = _progress(total)
                while chunk := response.read(_MIB):
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise HubError(f"cannot write {dst}: {os_reason(e)}") from None
                    done += len(chunk)
                    bar.update(done / _MIB)
        except urllib.error.HTTPError as e:
            raise HubError(f"download of {url} failed: HTTP {e.code} {clip(e.reason)}") from None
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise HubError(
                f"download of {url} failed (no network, or the connection dropped): {clip(str(reason), 200)}"
            ) from None
        try:
            out.flush()
        except OSError as e:
            raise HubError(f"cannot write {dst}: {os_reason(e)}") from None
    if total is not None and done != total:
        raise HubError(f"download of {url} was interrupted: {done} of {total} bytes arrived")


def download_hf(source: dict, workdir: Path) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a dependency of vitops
        raise HubError("downloading from the Hugging Face hub needs huggingface_hub") from e
    try:
        return Path(
            hf_hub_download(
                repo_id=source["hf_repo"],
                filename=source["filename"],
                revision=source.get("revision"),
                cache_dir=workdir,
            )
        )
    except Exception as e:  # noqa: BLE001 - network, auth, missing file: all end here
        reraise_signal(e)  # a signal during the download stays that signal
        raise HubError(
            f"download of {source['hf_repo']}/{source['filename']} from the Hugging Face "
            f"hub failed (no network?): {type(e).__name__}: {clip(str(e), 300)}"
        ) from None
