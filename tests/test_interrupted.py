"""`vitops analyze` killed part-way (SIGKILL, SIGTERM): the previous report stays as it was, and
nothing it wrote survives the next run."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from vitops.app.commands import analyze
from vitops.hub import shipped


def snapshot(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".vitops-tmp-"))


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for i in range(160):
        src = shipped.samples()[i % 8]
        shutil.copy(src, folder / f"{i:03d}_{src.name}")
    return folder


@pytest.mark.parametrize("sig,extra", [(signal.SIGKILL, 0.0), (signal.SIGKILL, 1.5), (signal.SIGTERM, 0.5)])
def test_killed_analyze_keeps_the_previous_report(tmp_path, many, sig, extra):
    out = tmp_path / "out"
    analyze("digits_vit", [str(p) for p in shipped.samples()], out, progress=False, show=2)
    before = snapshot(out)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitops", "analyze", str(many), "--out", str(out), "--batch-size", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    deadline = time.time() + 120
    while not leftovers(tmp_path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # until the run has started writing
    time.sleep(extra)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0, "the run finished before it was killed: give it more images"
    assert snapshot(out) == before  # the previous report, byte for byte
    if sig == signal.SIGTERM:  # a signal the process sees: it removes its own temporary folder
        assert leftovers(tmp_path) == [], proc.stderr.read().decode()[-2000:]
    analyze("digits_vit", [str(p) for p in shipped.samples()][:4], out, progress=False, show=1)
    assert leftovers(tmp_path) == []  # the next run swept what the killed one left
    assert len(snapshot(out)) and snapshot(out) != before
