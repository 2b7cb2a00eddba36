"""The README's commands are the ones CI and users run, and the layout it describes is the tree."""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _section(name):
    text = (ROOT / "README.md").read_text()
    return text.split(f"## {name}", 1)[1].split("\n## ", 1)[0]


def _commands(section):
    return re.findall(r"```bash\n(.*?)\n```", _section(section), re.S)


def test_ci_runs_the_readme_test_command():
    (command,) = _commands("Run the tests")
    assert command.strip() in (ROOT / ".ci" / "run").read_text()


def test_quickstart_example_runs_and_prints_what_the_readme_says(tmp_path):
    """The script the Quickstart names, run as the README says (on this backend): it converts a
    timm ViT-S/16, runs a photograph and prints the top-5 and the maps' shapes, and leaves no
    checkpoint behind in the temporary folder."""
    pytest.importorskip("timm")
    (command,) = _commands("Quickstart")
    script = re.search(r"python (\S+\.py)", command).group(1)
    proc = subprocess.run(
        [sys.executable, str(ROOT / script)],
        capture_output=True,
        text=True,
        timeout=600,
        env={
            **os.environ,
            "KERAS_BACKEND": keras.config.backend(),
            "HF_HUB_OFFLINE": "1",
            "TMPDIR": str(tmp_path),
        },
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(tmp_path.glob("vitops-quickstart-*")), os.listdir(tmp_path)
    out = proc.stdout
    assert "converted vit_small_patch16_224: 12 blocks, 6 heads, dim 384" in out
    assert f"backend: {keras.config.backend()}" in out
    assert len(re.findall(r"^  0\.\d{4}  \S", out, re.M)) == 5  # five probabilities with class names
    assert "attention: 12 blocks of shape (1, 6, 197, 197)" in out
    assert "hidden states: 13 of shape (1, 197, 384)" in out


def test_the_layout_section_lists_the_tree():
    """Every subpackage and top-level module of vitops/ is in the README's layout, and every path
    the layout names exists."""
    layout = _section("Layout")
    named = set(re.findall(r"^(\S+/?)\s", layout.split("```")[1], re.M))
    package = ROOT / "vitops"
    entries = {f"vitops/{p.name}/" for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"}
    entries |= {f"vitops/{p.name}" for p in package.glob("*.py")}
    assert entries <= named | {"vitops/__main__.py"}, sorted(entries - named)
    for path in named:
        assert (ROOT / path.rstrip("/")).exists(), path
