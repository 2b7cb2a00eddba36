"""Killed processes leave nothing behind: `vitops convert` and registry downloads are killed
(SIGKILL, SIGTERM) at several points; the previous output stays intact, SIGTERM cleans up at
once (vitops.io.signals.exit_on_sigterm), and what SIGKILL leaves carries the owner's PID and
is swept by the next operation in that folder."""

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.timm_reference import TINY, make_timm, save_state_dict

import vitops
import vitops.app.cli
from vitops import hub
from vitops.io import temporary as _cleanup

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")

LEFTOVER = re.compile(r"^\.vitops-tmp-[0-9a-f]{8}-(\d+)-")

# A process that imports vitops (and the backend) once, then forks one child per command: each
# child runs a vitops operation as the CLI would, with the SIGTERM handler the CLI installs.
# One import for many kills keeps the test fast on every backend.
ZYGOTE = r"""
import json, os, sys
import vitops, vitops.app.cli, vitops.hub, vitops.hub.download
from vitops.io.signals import exit_on_sigterm

for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # the operation's own output must not mix with this protocol
        sys.stdout = open(os.devnull, "w")
        os.environ.update(cmd["env"])
        exit_on_sigterm()
        try:
            if cmd["op"] == "convert":
                code = vitops.app.cli.main(["convert", *cmd["args"]])
            else:
                vitops.hub.fetch(cmd["args"][0])
                code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            code = 99
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status}), flush=True)
"""


@pytest.fixture(scope="module")
def zygote():
    env = dict(os.environ, VITOPS_NO_PROGRESS="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )

    def run(op, args, env, kill_when, sig, delay):
        """Start one operation, wait for kill_when(pid) (polled), sleep `delay`, send `sig`.
        Returns (pid, wait status, whether the signal was sent before the child ended)."""
        proc.stdin.write(json.dumps({"op": op, "args": args, "env": env}) + "\n")
        proc.stdin.flush()
        pid = json.loads(proc.stdout.readline())["pid"]
        deadline, sent = time.monotonic() + 120, False
        while time.monotonic() < deadline and _alive(pid):
            if kill_when(pid):
                time.sleep(delay)
                sent = _signal(pid, sig)
                break
            time.sleep(0.002)
        status = json.loads(proc.stdout.readline())["status"]
        return pid, status, sent

    yield run
    proc.stdin.close()
    proc.wait(timeout=60)


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        return False


def _signal(pid, sig):
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _temporaries(folder, pid=None):
    """vitops' temporaries in folder (of process `pid` only, when given)."""
    return sorted(
        p
        for p in os.listdir(folder)
        if p.startswith(_cleanup.TEMP_PREFIX) and (pid is None or LEFTOVER.match(p).group(1) == str(pid))
    )


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# ---- the sweep itself ----


def test_sweep_removes_only_dead_owners_leftovers(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = _cleanup.temp_name("x").split("-")[2]
    names = {
        "dead": f".vitops-tmp-{host}-{dead.pid}-0000-m.safetensors",
        "alive": _cleanup.temp_name("m.safetensors"),  # this process: still working on it
        "reused": f".vitops-tmp-{host}-{os.getpid()}-1111-old.safetensors",  # PID reused since
        "foreign_new": f".vitops-tmp-00000000-{dead.pid}-2222-m.safetensors",  # another host
        "foreign_old": f".vitops-tmp-00000000-{dead.pid}-3333-m.safetensors",
        "user": ".tmp-user-file",
        "similar": "vitops-tmp-x",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f".vitops-tmp-{host}-{dead.pid}-4444-download").mkdir()
    (tmp_path / f".vitops-tmp-{host}-{dead.pid}-4444-download" / "part").write_bytes(b"x")
    hour_ago = time.time() - 3600
    os.utime(tmp_path / names["reused"], (hour_ago, hour_ago))
    two_days_ago = time.time() - 2 * 86400
    os.utime(tmp_path / names["foreign_old"], (two_days_ago, two_days_ago))
    removed = _cleanup.sweep(tmp_path)
    assert sorted(removed) == sorted(
        [names["dead"], names["reused"], names["foreign_old"], f".vitops-tmp-{host}-{dead.pid}-4444-download"]
    )
    assert sorted(os.listdir(tmp_path)) == sorted(
        [names["alive"], names["foreign_new"], names["user"], names["similar"]]
    )


# ---- vitops convert ----


@pytest.fixture(scope="module")
def vit_s(tmp_path_factory):
    """A timm ViT-S/16 checkpoint (88 MB): conversion takes long enough to be interrupted."""
    folder = tmp_path_factory.mktemp("vit_s")
    save_state_dict(make_timm("vit_small_patch16_224", num_classes=1000), folder / "vit_s.safetensors")
    small = make_timm("vit_small_patch16_224", **TINY, num_classes=3)
    save_state_dict(small, folder / "small.safetensors")
    return folder


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_convert_keeps_the_previous_output(zygote, vit_s, tmp_path, sig):
    out = tmp_path / "out"
    dst = out / "model.safetensors"
    vitops.convert(vit_s / "small.safetensors", dst)  # the previous output
    previous = _digest(dst)

    def started(pid):
        return bool(_temporaries(out, pid))

    def writing(pid):  # bytes are being written in its temporary folder (by safetensors' own temp)
        return any(f.stat().st_size > 0 for d in _temporaries(out, pid) for f in (out / d).iterdir())

    interrupted, while_writing, killed_pids = 0, 0, set()
    for when, delay in ((started, 0.0), (started, 0.3), (writing, 0.0), (writing, 0.02)):
        pid, status, sent = zygote(
            "convert", [str(vit_s / "vit_s.safetensors"), str(dst)], {}, when, sig, delay
        )
        killed = (
            sent and os.WIFSIGNALED(status)
            if sig == signal.SIGKILL
            else sent and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGTERM
        )
        left = _temporaries(out)
        if killed and _digest(dst) != previous:
            # the signal landed after the atomic replace (or was re-sent after a lost handler
            # exception): the new file is complete, and nothing is left behind
            assert vitops.load_params(dst)[1].name == "vit_small_patch16_224"
            previous = _digest(dst)
            if sig == signal.SIGTERM:
                assert left == []
            else:
                killed_pids.add(str(pid))
        elif killed:  # never a partial file: the previous output is untouched
            interrupted += 1
            while_writing += when is writing
            if sig == signal.SIGTERM:
                assert left == []  # the handler raised SystemExit: removed at once
            else:  # its own leftover; earlier ones were swept when it started
                killed_pids.add(str(pid))
                assert _temporaries(out, pid) and {LEFTOVER.match(n).group(1) for n in left} <= killed_pids
        else:  # it finished before the signal: a complete new file
            assert vitops.load_params(dst)[1].name == "vit_small_patch16_224"
            previous = _digest(dst)
    assert interrupted >= 2 and while_writing >= 1, (
        f"interrupted {interrupted} times, {while_writing} while writing"
    )
    # the next invocation sweeps what SIGKILL left
    vitops.convert(vit_s / "small.safetensors", dst)
    assert os.listdir(out) == ["model.safetensors"]


# ---- registry downloads ----


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_download_leaves_nothing_after_the_next_fetch(
    zygote, module_file_server, tmp_path, monkeypatch, sig
):
    server, files = module_file_server
    buf = io.BytesIO()
    torch.save(
        {"model": make_timm("deit_tiny_distilled_patch16_224", **TINY, num_classes=3).state_dict()}, buf
    )
    files["deit.pth"] = buf.getvalue()
    registry = tmp_path / "registry.json"
    entry = {"format": "deit", "source": {"url": f"{server}/slow/deit.pth"}}
    registry.write_text(json.dumps({"models": [dict(entry, name="tiny"), dict(entry, name="other")]}))
    home = tmp_path / "home"
    env = {"VITOPS_HOME": str(home), "VITOPS_REGISTRY": str(registry)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("VITOPS_NO_PROGRESS", "1")
    hub.fetch("other")  # the cache's previous content
    before = {
        p: _digest(home / p) for p in ("checksums.json", "models/other.safetensors", "models/other.json")
    }

    def partial_download(pid):
        return any(
            f.stat().st_size > 0
            for d in _temporaries(home, pid)
            for f in (home / d).rglob("*")
            if f.is_file()
        )

    for delay in (0.0, 0.1):
        pid, status, sent = zygote("fetch", ["tiny"], env, partial_download, sig, delay)
        assert sent, "the download ended before it could be interrupted"
        left = _temporaries(home)
        if sig == signal.SIGTERM:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + signal.SIGTERM
            assert left == []
        else:
            assert _temporaries(home, pid) and all(LEFTOVER.match(n) for n in left)
        assert not (home / "models" / "tiny.safetensors").exists()
        assert {p: _digest(home / p) for p in before} == before
    hub.fetch("tiny")  # the next fetch sweeps the leftovers and completes
    files = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
    assert files == [
        "checksums.json",
        "models/other.json",
        "models/other.safetensors",
        "models/tiny.json",
        "models/tiny.safetensors",
    ]
    assert _temporaries(home) == [] and _temporaries(home / "models") == []


LOST_SIGNAL = r"""
import gc, os, signal, sys, time
from vitops.io.signals import exit_on_sigterm
exit_on_sigterm()
def callback(phase, info):  # jax registers a gc callback like this one: a handler's exception
    if phase == "start":    # raised inside it is only printed as "Exception ignored"
        gc.callbacks.remove(callback)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
gc.callbacks.append(callback)
start = time.monotonic()
try:
    gc.collect()
    time.sleep(10)
finally:
    print("finally ran after", time.monotonic() - start, flush=True)
"""


def test_sigterm_inside_a_gc_callback_still_ends_the_program():
    done = subprocess.run([sys.executable, "-c", LOST_SIGNAL], capture_output=True, text=True, timeout=120)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "finally ran after" in done.stdout  # raised where `finally` blocks run, not a hard exit
    # timed inside the program (importing the backend may take longer than the sleep)
    assert float(done.stdout.split()[-1]) < 5, "the signal was lost until the sleep ended"


# ---- a SIGTERM that reaches the code as another exception ----


def _signal_inside_c(signum=signal.SIGTERM):
    """What CPython raises when a signal handler's SystemExit lands while a C function runs
    Python code and that function returns a value anyway: a SystemError caused by it (seen in CI
    as "<built-in function fspath> returned a result with an exception set")."""
    from vitops.io.signals import _SignalExit

    try:
        raise _SignalExit(signum)
    except SystemExit as e:
        raise SystemError("<built-in function fspath> returned a result with an exception set") from e


@pytest.mark.parametrize("wrap", ["system_error", "error_message"])
def test_cli_ends_with_143_when_the_signal_came_as_another_exception(monkeypatch, tmp_path, capsys, wrap):
    import vitops.converters

    def convert(*args, **kwargs):
        if wrap == "system_error":
            _signal_inside_c()
        _as_error_message(_signal_inside_c, vitops.ConversionError)

    monkeypatch.setattr(vitops.converters, "convert", convert)
    with pytest.raises(SystemExit) as ended:
        vitops.app.cli.main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "b.safetensors")])
    assert ended.value.code == 128 + signal.SIGTERM
    assert "error" not in capsys.readouterr().err  # no error message for a termination


def test_cli_still_reports_an_unrelated_system_error(monkeypatch, tmp_path, capsys):
    import vitops.converters

    def convert(*args, **kwargs):
        raise SystemError("a real bug")

    monkeypatch.setattr(vitops.converters, "convert", convert)
    code = vitops.app.cli.main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "b.safetensors")])
    assert code == 1 and "internal error: SystemError: a real bug" in capsys.readouterr().err


def _interrupt_inside_c():
    """Ctrl-C's KeyboardInterrupt, landed inside a C function: a SystemError caused by it."""
    try:
        raise KeyboardInterrupt
    except KeyboardInterrupt as e:
        raise SystemError("<built-in function fspath> returned a result with an exception set") from e


def _as_error_message(signalled, error=vitops.ImageError):
    """What the readers do with any exception: a clear error, the original context hidden."""
    try:
        signalled()
    except SystemError as e:
        raise error(f"cannot read it: {e}") from None


def test_cli_ends_with_130_when_ctrl_c_came_as_another_exception(monkeypatch, tmp_path, capsys):
    import vitops.converters

    monkeypatch.setattr(vitops.converters, "convert", lambda *a, **k: _interrupt_inside_c())
    code = vitops.app.cli.main(["convert", str(tmp_path / "a.pth"), str(tmp_path / "b.safetensors")])
    assert code == 130 and "interrupted" in capsys.readouterr().err


@pytest.mark.parametrize(
    "how,ends",
    [
        ("terminated", SystemExit),
        ("terminated-as-error", SystemExit),
        ("interrupted", KeyboardInterrupt),
        ("interrupted-as-error", KeyboardInterrupt),
    ],
)
def test_a_signal_inside_an_image_decoder_ends_the_run_instead_of_skipping_the_image(how, ends):
    from vitops.app.inputs import decoder

    signalled = _signal_inside_c if how.startswith("terminated") else _interrupt_inside_c

    def read(item):
        if item == "signalled":
            _as_error_message(signalled) if how.endswith("as-error") else signalled()
        if item == "broken":
            raise ValueError("not an image")
        return np.zeros((4, 4, 3), np.uint8)

    work = decoder(["fine", "broken", "fine"], [lambda rgb: rgb], read)
    batch = work(range(3))
    assert batch.positions == [0, 2] and [p for p, _ in batch.failed] == [1]  # a failure skips
    work = decoder(["fine", "signalled", "fine"], [lambda rgb: rgb], read)
    with pytest.raises(ends) as ended:
        work(range(3))
    if ends is SystemExit:
        assert ended.value.code == 128 + signal.SIGTERM


def test_a_signal_inside_a_reader_is_not_turned_into_its_error(monkeypatch, tmp_path):
    """The readers that turn any failure into a one-line error (a hub download, a PyTorch
    checkpoint, a .npz file, an image header, an analysis argument) let a signal through."""
    import zipfile

    import huggingface_hub
    import PIL.Image

    from vitops.analysis._checks import as_tensor
    from vitops.converters.checkpoint_files import read_torch_pickle
    from vitops.converters.npz import read_npz
    from vitops.hub.download import download_hf
    from vitops.io.image_header import _pillow

    def signalled(*args, **kwargs):
        _signal_inside_c()

    pth, npz, png = tmp_path / "a.pth", tmp_path / "a.npz", tmp_path / "a.png"
    torch.save({"w": torch.zeros(2)}, pth)
    np.savez(npz, w=np.zeros(2, np.float32))
    PIL.Image.new("RGB", (4, 4)).save(png)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", signalled)
    monkeypatch.setattr(torch, "load", signalled)
    monkeypatch.setattr(zipfile.ZipFile, "infolist", signalled)
    monkeypatch.setattr(PIL.Image, "open", signalled)
    monkeypatch.setattr(vitops.analysis._checks.ops, "convert_to_tensor", signalled)
    calls = {
        "hub": lambda: download_hf({"hf_repo": "a/b", "filename": "c"}, tmp_path),
        "pth": lambda: read_torch_pickle(pth),
        "npz": lambda: read_npz(npz),
        "image header": lambda: _pillow(png),
        "analysis argument": lambda: as_tensor([1.0], "x"),
    }
    for what, call in calls.items():
        with pytest.raises(SystemExit) as ended:
            call()
        assert ended.value.code == 128 + signal.SIGTERM, what
