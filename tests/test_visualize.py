"""`vitops visualize`: the parser and handler the CLI wires in, on the shipped digits ViT."""

import argparse
import base64
import re

import numpy as np
import pytest

import vitops
from vitops.analysis.features import unit_activations
from vitops.app import visualize
from vitops.io.output_folder import MANIFEST


def parse(argv):
    parser = argparse.ArgumentParser(prog="vitops")
    visualize.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_writes_one_png_per_unit_and_a_self_contained_page(tmp_path, capsys):
    import cv2

    out = tmp_path / "features"
    args = parse(
        [
            "visualize",
            "--block",
            "1",
            "--unit",
            "30",
            "--unit",
            "3",
            "--out",
            str(out),
            "--steps",
            "4",
            "--seed",
            "2",
        ]
    )
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "index.html", "unit_3.png", "unit_30.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["features"]  # no temporary folder left
    page = (out / "index.html").read_text()
    embedded = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(embedded) == 2 and "src='http" not in page and "unit_30.png" not in page
    # the page's images are the files, in the order asked
    assert base64.b64decode(embedded[0]) == (out / "unit_30.png").read_bytes()
    assert base64.b64decode(embedded[1]) == (out / "unit_3.png").read_bytes()
    # each caption names block, unit and the activation the image reaches
    model = vitops.load("digits_vit")
    shown = cv2.cvtColor(cv2.imread(str(out / "unit_30.png")), cv2.COLOR_BGR2RGB)
    assert shown.shape == (32, 32, 3)
    reached, _ = unit_activations(model, (shown[None].astype(np.float32) / 255 - 0.5) / 0.5, [(1, 30)])
    caption = re.search(r"block 1, unit 30: activation ([-0-9.e]+)", page)
    assert caption is not None
    # the PNG is 8-bit, so the activation on it is close to, not exactly, the one reported
    assert float(caption.group(1)) == pytest.approx(float(np.asarray(reached)[0, 0]), rel=0.05, abs=0.02)
    assert "block 1, unit 3: activation" in page
    assert "block 1, units 30 (" in capsys.readouterr().out
    # running again replaces the folder it wrote
    args = parse(
        ["visualize", "--block", "1", "--unit", "7", "--unit", "8", "--out", str(out), "--steps", "2"]
    )
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "index.html", "unit_7.png", "unit_8.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["features"]


@pytest.mark.parametrize(
    "argv,error,match",
    [
        (["--block", "9", "--unit", "1"], vitops.AnalysisError, r"block must be an int in \[0, 4\)"),
        (["--block", "1", "--unit", "128"], vitops.AnalysisError, r"unit must be an int in \[0, 128\)"),
        (["--block", "1", "--unit", "2", "--unit", "2"], vitops.AnalysisError, "given more than once"),
        (["--block", "1", "--unit", "2", "--steps", "-1"], vitops.AnalysisError, "steps"),
        (
            ["--block", "1", "--unit", "2", "--model", "no_such_model.safetensors"],
            vitops.WeightFileError,
            "no such weight file",
        ),
    ],
)
def test_bad_requests_raise_vitops_errors_and_write_nothing(tmp_path, argv, error, match):
    args = parse(["visualize", "--out", str(tmp_path / "out"), "--steps", "2"] + argv)
    with pytest.raises(error, match=match):
        args.func(args)
    assert list(tmp_path.iterdir()) == []


def test_never_replaces_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not ours")
    args = parse(["visualize", "--block", "0", "--unit", "1", "--out", str(mine), "--steps", "1"])
    with pytest.raises(vitops.OutputError, match="vitops did not write"):
        args.func(args)
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]
    (tmp_path / "file").write_text("x")
    args = parse(["visualize", "--block", "0", "--unit", "1", "--out", str(tmp_path / "file")])
    with pytest.raises(vitops.OutputError, match="is not a folder"):
        args.func(args)
