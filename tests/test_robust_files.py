"""OS errors end as vitops errors that say what happened (permission denied, a directory, a
full disk), and `vitops convert` / `vitops models` answer a user's mistake in one line."""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile

import cv2
import numpy as np
import pytest
from helpers.timm_reference import TINY, make_timm, save_state_dict

import vitops
from vitops.app.cli import main
from vitops.converters import ConversionError
from vitops.io import weight_file as weights


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "ck.safetensors"
    save_state_dict(make_timm("vit_small_patch16_224", **TINY, num_classes=3), path)
    return path


# ---- permissions, seen by an unprivileged process ----

SCENARIOS = r"""
import contextlib, io
from vitops.preprocess import preprocess
d = sys.argv[1]
out = {}
def attempt(name, fn):
    try:
        fn()
        out[name] = "ok"
    except vitops.VitopsError as e:
        out[name] = f"{type(e).__name__}: {e}"
    except BaseException as e:
        out[name] = f"UNEXPECTED {type(e).__name__}: {e}"
attempt("weight_file", lambda: vitops.load(f"{d}/locked.safetensors"))
attempt("weight_file_in_private_folder", lambda: vitops.load(f"{d}/private/m.safetensors"))
attempt("checkpoint", lambda: vitops.convert(f"{d}/locked.safetensors", f"{d}/open/o.safetensors"))
attempt("destination", lambda: vitops.convert(f"{d}/ck.safetensors", f"{d}/readonly/o.safetensors"))
attempt("labels", lambda: vitops.convert(f"{d}/ck.safetensors", f"{d}/open/o.safetensors", labels=f"{d}/locked.txt"))
attempt("image", lambda: preprocess([f"{d}/locked.png"], size=32))
os.environ["VITOPS_HOME"] = f"{d}/readonly/cache"
os.environ["VITOPS_REGISTRY"] = f"{d}/registry.json"
attempt("cache", lambda: vitops.hub.fetch("tiny"))
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = vitops.app.cli.main(["convert", f"{d}/ck.safetensors", f"{d}/readonly/o.safetensors"])
out["cli"] = [code, err.getvalue()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def unprivileged(checkpoint):
    """Run SCENARIOS in a process that cannot read the locked files nor write the read-only
    folder: as 'nobody' when the tests run as root (whom permissions do not stop)."""
    d = tempfile.mkdtemp(prefix="vitops-perm-")
    try:
        os.chmod(d, 0o755)
        shutil.copy(checkpoint, f"{d}/ck.safetensors")
        shutil.copy(checkpoint, f"{d}/locked.safetensors")
        os.makedirs(f"{d}/private")
        shutil.copy(checkpoint, f"{d}/private/m.safetensors")
        cv2.imwrite(f"{d}/locked.png", np.zeros((8, 8, 3), np.uint8))
        with open(f"{d}/locked.txt", "w") as f:
            f.write("a\nb\nc\n")
        with open(f"{d}/registry.json", "w") as f:
            json.dump({"models": [{"name": "tiny", "source": {"url": "http://127.0.0.1:9/x.pth"}}]}, f)
        for name in ("open", "readonly"):
            os.makedirs(f"{d}/{name}")
        os.chmod(f"{d}/open", 0o777)
        os.chmod(f"{d}/readonly", 0o555)
        os.chmod(f"{d}/private", 0o700 if os.geteuid() == 0 else 0o000)
        for name in ("locked.safetensors", "locked.png", "locked.txt"):
            os.chmod(f"{d}/{name}", 0o000)
        for name in ("ck.safetensors", "registry.json"):
            os.chmod(f"{d}/{name}", 0o644)
        drop = "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n" if os.geteuid() == 0 else ""
        # everything imported before the privileges go: the interpreter's own files are root's
        prelude = (
            "import os, sys, json\nimport vitops, vitops.hub, vitops.app.cli, vitops.preprocess, vitops.app.commands, "
            "concurrent.futures.thread, "
            "vitops.hub.download, platformdirs, PIL.Image, PIL.PngImagePlugin, cv2\n" + drop
        )
        proc = subprocess.run(
            [sys.executable, "-c", prelude + SCENARIOS, d], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        yield json.loads(proc.stdout.strip().splitlines()[-1]), d
    finally:
        os.chmod(f"{d}/private", 0o755)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize(
    "scenario,expected",
    [
        ("weight_file", "WeightFileError: cannot read .*/locked.safetensors: permission denied"),
        (
            "weight_file_in_private_folder",
            "WeightFileError: cannot read .*/private/m.safetensors: permission denied",
        ),
        ("checkpoint", "ConversionError: cannot read .*/locked.safetensors: permission denied"),
        ("destination", "ConversionError: cannot write .*/readonly/o.safetensors: permission denied"),
        ("labels", "ConversionError: cannot read the labels file .*/locked.txt: permission denied"),
        ("image", "ImageError: cannot read .*/locked.png: permission denied"),
        ("cache", "HubError: cannot write in .*/readonly/cache: permission denied"),
    ],
)
def test_permission_denied_says_so(unprivileged, scenario, expected):
    import re

    results, _ = unprivileged
    assert re.fullmatch(expected, results[scenario]), results[scenario]


def test_cli_reports_an_unwritable_destination_in_one_line(unprivileged):
    (code, err), d = unprivileged[0]["cli"], unprivileged[1]
    assert code == 2
    assert err == f"vitops convert: error: cannot write {d}/readonly/o.safetensors: permission denied\n"
    assert os.listdir(f"{d}/readonly") == []


# ---- directories, full disks ----


def test_a_directory_as_destination(tmp_path, checkpoint, capsys):
    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match="cannot write .*out: it is a directory"):
        vitops.convert(checkpoint, tmp_path / "out")
    assert main(["convert", str(checkpoint), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it is a directory" in err and "Traceback" not in err


def test_a_full_disk_leaves_the_previous_file_and_no_temporary(tmp_path, checkpoint, monkeypatch):
    dst = tmp_path / "out" / "m.safetensors"
    dst.parent.mkdir()
    vitops.convert(checkpoint, dst)  # a vitops file, which a conversion may replace
    previous = dst.read_bytes()

    def full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(weights, "save_file", full)
    with pytest.raises(ConversionError, match="cannot write .*m.safetensors: no space left on device"):
        vitops.convert(checkpoint, dst)
    assert os.listdir(dst.parent) == ["m.safetensors"] and dst.read_bytes() == previous


def test_a_write_beyond_the_file_size_limit_is_reported(tmp_path, checkpoint):
    # A real failing write (RLIMIT_FSIZE, with SIGXFSZ ignored: EFBIG), as a full disk fails.
    code = (
        "import resource, signal, sys, vitops\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "try:\n    vitops.convert(sys.argv[1], sys.argv[2])\n"
        "except vitops.VitopsError as e:\n    print(type(e).__name__, e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint), str(tmp_path / "m.safetensors")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.stdout.startswith("ConversionError cannot write ") and "file too large" in proc.stdout, (
        proc.stdout + proc.stderr[-2000:]
    )
    assert os.listdir(tmp_path) == []


# ---- the CLI: user mistakes in one line, exit status 2 ----


def test_cli_convert_mistakes_are_one_line(tmp_path, checkpoint, capsys):
    import re

    for args, message in [
        (
            ["--labels", str(tmp_path / "missing.txt")],
            "cannot read the labels file .*missing.txt: no such file",
        ),
        (["--arch", "vit_gigantic_patch3_999"], "unknown architecture 'vit_gigantic_patch3_999'"),
        (["--format", "hf"], "holds no model.safetensors|config.json"),
    ]:
        assert main(["convert", str(checkpoint), str(tmp_path / "o.safetensors"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vitops convert: error: ") and err.count("\n") == 1, err
        assert re.search(message, err), err
        assert not (tmp_path / "o.safetensors").exists()


def test_cli_models_with_a_broken_registry_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "r.json").write_text(
        json.dumps({"models": [{"name": "../../x", "source": {"url": "http://h/x.pth"}}]})
    )
    monkeypatch.setenv("VITOPS_REGISTRY", str(tmp_path / "r.json"))
    assert main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a plain name" in err


def test_a_download_that_cannot_be_written_is_reported(tmp_path, monkeypatch, file_server):
    import io

    import torch

    base, files = file_server
    buf = io.BytesIO()
    torch.save(
        {"model": make_timm("deit_tiny_distilled_patch16_224", **TINY, num_classes=3).state_dict()}, buf
    )
    files["big.pth"] = buf.getvalue()
    assert len(files["big.pth"]) > 400_000
    url = f"{base}/files/big.pth"
    (tmp_path / "registry.json").write_text(json.dumps({"models": [{"name": "big", "source": {"url": url}}]}))
    code = (
        "import resource, signal, vitops.hub\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))\n"
        "try:\n    vitops.hub.fetch('big')\n"
        "except vitops.VitopsError as e:\n    print(type(e).__name__, e)\n"
    )
    env = dict(
        os.environ,
        VITOPS_HOME=str(tmp_path / "home"),
        VITOPS_REGISTRY=str(tmp_path / "registry.json"),
        VITOPS_NO_PROGRESS="1",
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    # the old code called this "no network, or the connection dropped"
    assert proc.stdout.startswith("HubError cannot write ") and proc.stdout.rstrip().endswith(
        "file too large"
    ), proc.stdout + proc.stderr[-2000:]
    assert os.listdir(tmp_path / "home") == []
