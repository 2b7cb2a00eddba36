"""Hostile input, second round: nothing of the user's is lost or replaced, nothing is written
outside the output folder, state files are read as hostile input, and text from outside stays
text. Each test reproduces one way the code before these checks lost data or ended in a foreign
exception. Cases that could write a lot run in a child with a file-size limit."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import vitops
from vitops.app.cli import main
from vitops.app.commands import analyze
from vitops.hub import shipped
from vitops.io.output_folder import MANIFEST


def snapshot(root: Path) -> dict:
    """Every entry under root: its kind and bytes (or link target) and mode, to compare before/after."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            if p.is_symlink():
                out[str(p.relative_to(root))] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p.relative_to(root))] = ("file", p.read_bytes(), st.st_mode)
            else:
                out[str(p.relative_to(root))] = ("dir", st.st_mode)
    return out


@pytest.fixture
def photos(tmp_path):
    """A user's folder: four digits, notes and a subfolder (what `--out photos/` once deleted)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in shipped.samples()[:4]:
        shutil.copy(p, folder / p.name)
    (folder / "notes.txt").write_text("mine")
    (folder / "old").mkdir()
    (folder / "old" / "x.txt").write_text("also mine")
    return folder


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vitops {command}: error:"), err
    return err[0]


# ---- an output folder is new, empty, or one vitops wrote ----


def test_analyze_out_equal_to_its_input_folder_loses_nothing(photos, capsys):
    before = snapshot(photos)
    assert main(["analyze", str(photos), "--out", str(photos)]) == 2
    assert "holds the input" in one_line_error(capsys, "analyze")
    assert snapshot(photos) == before


@pytest.mark.parametrize("command", ["analyze", "report", "visualize"])
def test_no_command_replaces_a_folder_it_did_not_write(tmp_path, photos, capsys, command, state):
    argv = {
        "analyze": ["analyze", str(shipped.samples()[0])],
        "report": ["report", str(state)],
        "visualize": ["visualize", "--block", "0", "--unit", "1", "--steps", "1"],
    }[command]
    home = tmp_path / "home"  # a home directory: dot files, a project
    home.mkdir()
    (home / ".bashrc").write_text("export X=1")
    (home / "project").mkdir()
    (home / "project" / "main.py").write_text("print(1)")
    link = tmp_path / "link"
    link.symlink_to(photos, target_is_directory=True)
    before = snapshot(tmp_path)
    for out, reason in (
        (photos, "vitops did not write"),
        (home, "vitops did not write"),
        (link, "symbolic link"),
    ):
        assert main([*argv, "--out", str(out)]) == 2
        assert reason in one_line_error(capsys, command)
    assert snapshot(tmp_path) == before


def test_home_directory_as_out(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("chapter 1")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(home)
    assert main(["analyze", "--out", "~"]) == 2
    assert "vitops did not write" in one_line_error(capsys, "analyze")
    assert snapshot(home) == before


def test_a_folder_vitops_wrote_is_replaced_but_not_once_the_user_added_to_it(tmp_path, capsys):
    out = tmp_path / "report"
    images = [str(p) for p in shipped.samples()[:4]]
    analyze("digits_vit", images, out, progress=False, show=1)
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["entries"]) == {p.name for p in out.iterdir()} - {MANIFEST}
    analyze("digits_vit", images, out, progress=False, show=2)  # vitops' own folder: replaced
    assert (out / "report.html").is_file()
    (out / "my_notes.txt").write_text("keep me")
    before = snapshot(out)
    assert main(["analyze", *images, "--out", str(out)]) == 2
    assert "my_notes.txt" in one_line_error(capsys, "analyze")
    assert snapshot(out) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    analyze("digits_vit", images, empty, progress=False, show=1)  # an empty folder may be filled
    assert (empty / "report.html").is_file()


def test_convert_and_save_state_replace_only_their_own_files(tmp_path, photos, capsys):
    image = photos / sorted(p.name for p in photos.glob("*.png"))[0]
    before = snapshot(photos)
    weights = str(shipped.model_path("digits_vit"))
    assert main(["convert", weights, str(image)]) == 2  # a photo as the destination
    assert "not a vitops weight file vitops wrote" in one_line_error(capsys, "convert")
    assert main(["convert", weights, str(photos)]) == 2  # a folder
    assert "is a directory" in one_line_error(capsys, "convert")
    assert main(["analyze", str(image), "--save-state", str(photos / "notes.txt")]) == 2
    assert "not a analysis state file vitops wrote" in one_line_error(capsys, "analyze")
    assert snapshot(photos) == before


def test_a_state_file_inside_out_is_refused_before_the_work(tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["analyze", "--out", str(out), "--save-state", str(out / "s.safetensors")]) == 2
    assert "lies inside the output folder" in one_line_error(capsys, "analyze")
    assert not out.exists()


# ---- state files are hostile input ----


@pytest.fixture
def state(tmp_path_factory):
    path = tmp_path_factory.mktemp("state") / "s.safetensors"
    analyze(
        ["digits_vit", "digits_deit"],
        [str(p) for p in shipped.samples()[:5]],
        None,
        save_state=path,
        progress=False,
        show=2,
        batch_size=4,
    )
    return path


def edited(state: Path, dst: Path, change) -> Path:
    """A copy of a state file whose study metadata `change` edited in place."""
    with safe_open(str(state), "numpy") as f:
        meta = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    extra = json.loads(meta["metadata"])
    change(extra["study"], arrays)
    meta["metadata"] = json.dumps(extra)
    save_file(arrays, str(dst), metadata=meta)
    return dst


def _set(path, value):
    def change(study, arrays):
        target = study
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


HOSTILE = {
    "label with a path": _set(["models", 0, "label"], "../../../x"),
    "absolute label": _set(["models", 0, "label"], "/tmp/x"),
    "label is a list": _set(["models", 0, "label"], ["a"]),
    "n_images 10**11": _set(["n_images"], 10**11),
    "n_images a string": _set(["n_images"], "8"),
    "n_images negative": _set(["n_images"], -1),
    "analysed too many": _set(["analysed"], 10**6),
    "settings a list": _set(["settings"], [1]),
    "batch size huge": _set(["settings", "batch_size"], 10**12),
    "threshold 10**400": _set(["settings", "threshold"], 10**400),
    "unknown setting": _set(["settings", "evil"], 1),
    "models empty": _set(["models"], []),
    "models a dict": _set(["models"], {"a": 1}),
    "config not JSON": _set(["models", 0, "config"], "{"),
    "config depth huge": _set(
        ["models", 0, "config"],
        json.dumps(
            {
                **json.loads(vitops.WeightFile(shipped.model_path("digits_vit")).metadata["config"]),
                "depth": 10**9,
            }
        ),
    ),
    "labels wrong count": _set(["models", 0, "info", "labels"], ["a"]),
    "labels not text": _set(["models", 0, "info", "labels"], [1] * 10),
    "preprocessing size huge": _set(["models", 0, "info", "preprocessing", "size"], [10**9, 10**9]),
    "preprocessing a string": _set(["models", 0, "info", "preprocessing"], "x"),
    "skipped position out of range": _set(["skipped"], [{"position": 10**9, "image": "x", "reason": "y"}]),
    "skipped entry a number": _set(["skipped"], [3]),
    "shards malformed": _set(["shards"], [[0]]),
    "shard index past count": _set(["shards"], [[5, 2]]),
    "shards claim more than present": _set(["shards"], [[0, 2]]),
    "seconds a string": _set(["seconds"], "fast"),
    "backend unknown": _set(["backend"], "numpy"),
    "study missing": lambda study, arrays: study.clear(),
    "per-image rows cut": lambda study, arrays: arrays.update(
        {"m0.per_image/distance": arrays["m0.per_image/distance"][:1]}
    ),
    "sample display of another size": lambda study, arrays: arrays.update(
        {"m0.samples/display": np.zeros((2, 64, 64, 3), np.uint8)}
    ),
    "distance of other heads": lambda study, arrays: arrays.update(
        {"m0.distance/mean": np.zeros((4, 7)), "m0.distance/m2": np.zeros((4, 7))}
    ),
    "names not JSON": lambda study, arrays: arrays.update(
        {"m0.per_image/names": np.frombuffer(b"\xff\xfe", np.uint8).copy()}
    ),
    "positions of floats": lambda study, arrays: arrays.update(
        {"m0.per_image/positions": arrays["m0.per_image/positions"].astype(np.float64)}
    ),
    "count of two numbers": lambda study, arrays: arrays.update({"m0.rollout/count": np.array([1, 2])}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_edited_state_files_are_one_line_errors_and_write_nothing(tmp_path, state, capsys, case):
    bad = edited(state, tmp_path / "bad.safetensors", HOSTILE[case])
    before = snapshot(tmp_path)
    assert main(["report", str(bad), "--out", str(tmp_path / "out" / "report")]) == 2
    line = one_line_error(capsys, "report")
    assert "internal error" not in line and "Traceback" not in line
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before
    assert not (tmp_path / "out" / "report").exists()


def test_the_state_itself_reports(tmp_path, state):
    summary = vitops.app.commands.report_from_states([state], tmp_path / "r")
    assert summary["images"]["analysed"] == 5
    assert sorted(p.name for p in (tmp_path / "r" / "per_image").iterdir())[0] == "digits_deit.csv"


def _limited(limit_bytes: int, *args: str) -> list[str]:
    """The command line of `python -m vitops args` in a child that may write limit_bytes a
    file: the limit set by the child itself (a preexec_fn runs between fork and exec, which is
    not safe in this multi-threaded test process)."""
    code = (
        "import resource, runpy, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes}))\n"
        "sys.argv = ['vitops', *sys.argv[1:]]\n"
        "runpy.run_module('vitops', run_name='__main__', alter_sys=True)\n"
    )
    return [sys.executable, "-c", code, *args]


@pytest.mark.parametrize("claimed,reason", [(10**11, "n_images must be an integer"), (10**8, "cover")])
def test_a_state_claiming_too_many_images_writes_nothing(tmp_path, state, claimed, reason):
    """10**11 images once made 56 GB of per-image rows: run in a child that may write 64 MB a file."""
    bad = edited(state, tmp_path / "huge.safetensors", _set(["n_images"], claimed))
    proc = subprocess.run(
        _limited(64 << 20, "report", str(bad), "--out", str(tmp_path / "r")),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert reason in proc.stderr
    assert not (tmp_path / "r").exists()
    assert sum(f.stat().st_size for f in tmp_path.rglob("*") if f.is_file()) < 4 << 20


def test_a_partial_shard_report_within_the_bound_and_beyond_it(tmp_path, monkeypatch):
    """A shard's report holds empty rows for the shards not given, within a budget or 16 times
    the rows present: one shard of 2 reports; one of 20 is refused when over the budget."""
    from vitops.app import commands

    images = [str(p) for p in shipped.samples()] * 10
    for count in (2, 20):
        part = tmp_path / f"part{count}.safetensors"
        analyze(
            "digits_vit",
            images,
            None,
            save_state=part,
            shard=(0, count),
            progress=False,
            show=1,
            batch_size=4,
        )
    vitops.app.commands.report_from_states([tmp_path / "part2.safetensors"], tmp_path / "r")
    rows = np.load(tmp_path / "r" / "per_image" / "digits_vit_distance.npy")
    assert rows.shape[0] == len(images) and np.isnan(rows[-1]).all() and not np.isnan(rows[0]).any()
    monkeypatch.setattr(commands, "EMPTY_ROWS_BUDGET", 1)  # as if the 80 rows were gigabytes
    commands.report_from_states([tmp_path / "part2.safetensors"], tmp_path / "r2")  # 40 of 80: 2x
    with pytest.raises(vitops.AnalysisError, match="cover 4 of the 80 images"):
        commands.report_from_states([tmp_path / "part20.safetensors"], tmp_path / "r3")
    assert not (tmp_path / "r3").exists()


# ---- text from outside is text; file names of any kind ----


def test_mathtext_file_names_and_labels_end_nothing(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sources = shipped.samples()
    names = [r"$\nosuch$.png", "$x^{$.png", "=cmd|' -C calc'!A0.png", "<img src=x onerror=alert(1)>.png"]
    for name, src in zip(names, sources):
        shutil.copy(src, folder / name)
    params, config = vitops.load_params(shipped.model_path("digits_vit"))
    model_path = tmp_path / "m.safetensors"
    vitops.save(model_path, params, config, labels=[r"$\frac{$", "=1+1", *map(str, range(2, 10))])
    out = tmp_path / "out"
    summary = analyze(str(model_path), [str(folder)], out, progress=False, show=4, batch_size=4)
    assert summary["images"]["analysed"] == 4
    csv_text = (out / "per_image" / "m.csv").read_text()
    assert "'=cmd|" in csv_text and ",=" not in csv_text  # a formula cell is shown as text
    page = (out / "report.html").read_text()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_a_fifo_and_a_name_that_is_not_utf8(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for p in shipped.samples()[:4]:
        shutil.copy(p, folder / p.name)
    os.mkfifo(folder / "x.png")  # once hung the run forever
    shutil.copy(shipped.samples()[5], os.path.join(os.fsencode(folder), b"\xff\xfe-digit.png"))
    (folder / "loop.png").symlink_to(folder / "loop.png")
    proc = subprocess.run(
        [sys.executable, "-m", "vitops", "analyze", str(folder), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    skipped = {s["image"]: s["reason"] for s in metrics["images"]["skipped"]}
    assert "not a regular file" in skipped["x.png"] and "symbolic links" in skipped["loop.png"]
    assert metrics["images"]["analysed"] == 5
    rows = (tmp_path / "o" / "per_image" / "digits_vit.csv").read_text()
    assert "\\xff\\xfe-digit.png" in rows


def test_gif_files_are_read_or_named(tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for p in shipped.samples()[:4]:
        shutil.copy(p, folder / p.name)
    Image.open(shipped.samples()[4]).convert("RGB").save(folder / "five.gif")
    summary = analyze("digits_vit", [str(folder)], tmp_path / "o", progress=False, show=1)
    assert summary["images"]["total"] == 5  # listed: analysed, or skipped with its reason
    assert summary["images"]["analysed"] + len(summary["images"]["skipped"]) == 5


# ---- weight-file fields of the wrong JSON type ----


def _rewrite_header(src: Path, dst: Path, change) -> Path:
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    change(header)
    text = json.dumps(header).encode()
    dst.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    return dst


def test_weight_file_fields_of_the_wrong_type(tmp_path):
    src = shipped.model_path("digits_vit")

    def dtype_list(h):
        h["cls_token"]["dtype"] = ["F32"]

    def eps_huge(h):
        config = json.loads(h["__metadata__"]["config"])
        config["layer_norm_eps"] = 10**200
        h["__metadata__"]["config"] = json.dumps(config)

    def preprocessing_huge(h):
        pre = json.loads(h["__metadata__"]["preprocessing"])
        pre["mean"] = [10**400, 0, 0]
        h["__metadata__"]["preprocessing"] = json.dumps(pre)

    for change, match in (
        (dtype_list, "unknown dtype"),
        (eps_huge, "layer_norm_eps"),
        (preprocessing_huge, "mean"),
    ):
        path = _rewrite_header(src, tmp_path / "bad.safetensors", change)
        with pytest.raises(vitops.WeightFileError, match=match):
            vitops.load(path)


# ---- the Python API raises vitops errors, and bounds what sizes allocate ----


def test_api_misuse_gives_vitops_errors():
    from vitops.analysis import MinibatchCKA, Reductions, visualize_feature

    model = vitops.load("digits_vit")
    params = model.get_params()
    empty = np.zeros((0, 32, 32, 3), np.float32)
    with pytest.raises(vitops.ImageError, match="empty batch"):
        vitops.forward(params, model.config, empty, reductions=Reductions(grams=True))
    with pytest.raises(vitops.ImageError, match="channels last"):
        model(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(vitops.ImageError, match="rank 4"):
        model(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(vitops.AnalysisError, match="discard_ratio"):
        Reductions(discard_ratio="x")
    with pytest.raises(vitops.AnalysisError, match="flags must be True or False"):
        Reductions(distance="yes")
    with pytest.raises(vitops.AnalysisError, match="at most 2048 pixels"):
        visualize_feature(model, 0, 1, steps=1, image_size=(10**5, 10**5))
    with pytest.raises(vitops.AnalysisError, match="at least 4 examples"):
        MinibatchCKA().update_grams(np.zeros((3, 0, 0)))
    with pytest.raises(vitops.AnalysisError, match="batch size"):
        analyze("digits_vit", [str(shipped.samples()[0])], None, save_state="x.safetensors", batch_size=0)


# ---- one CLI error path ----


def test_debug_shows_the_traceback_for_every_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("VITOPS_REGISTRY", str(tmp_path / "missing.json"))
    commands = (
        ["models"],
        ["convert", str(tmp_path / "missing.pth"), str(tmp_path / "o.safetensors")],
        ["report", str(tmp_path / "missing.safetensors")],
    )
    # `python -m vitops` in a process of its own: there Python prints the traceback
    plain, debug = (
        subprocess.run([sys.executable, "-m", "vitops", *commands[0], *extra], capture_output=True, text=True)
        for extra in ([], ["--debug"])
    )
    assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr, debug.stderr[-500:]
    # and every command in this process (each process start costs a backend's import)
    for argv in commands:
        assert main(argv) == 2
        one_line_error(capsys, argv[0])
        with pytest.raises(vitops.VitopsError):  # --debug: the exception itself, to Python
            main([*argv, "--debug"])


def test_a_full_disk_names_the_output(tmp_path, monkeypatch, capsys):
    import errno

    from vitops.app import commands

    def full(study, folder):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write() fails: no file name

    monkeypatch.setattr(commands, "write_into", full)
    out = tmp_path / "report"
    assert main(["analyze", "--out", str(out)]) == 2
    line = one_line_error(capsys, "analyze")
    assert str(out) in line and "no space left on device" in line
    assert not out.exists() and os.listdir(tmp_path) == []
