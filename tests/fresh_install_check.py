"""Run inside a fresh virtual environment holding vitops with the jax extra only (no torch, no
TensorFlow): with KERAS_BACKEND unset and Keras configured for its default (TensorFlow), the
CLI must pick JAX, say so in one line, and work. Used by the nox session `install-jax`.

usage: python fresh_install_check.py WORKDIR
"""

import json
import os
import subprocess
import sys
from pathlib import Path

work = Path(sys.argv[1]).absolute()
work.mkdir(parents=True, exist_ok=True)
env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
env.update(KERAS_HOME=str(work / "keras-home"), VITOPS_HOME=str(work / "vitops-home"), HF_HUB_OFFLINE="1")
for missing in ("torch", "tensorflow"):
    probe = subprocess.run(
        [sys.executable, "-c", f"import {missing}"], capture_output=True, env=env, cwd=work
    )
    assert probe.returncode != 0, f"{missing} is installed: this check needs an environment without it"
vitops = [sys.executable, "-m", "vitops"]


def run(*args):
    proc = subprocess.run(
        vitops + list(args), capture_output=True, text=True, env=env, cwd=work
    )  # not the source tree
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


models = run("models")
# the shipped models are listed (by name, under their heading) and so is the architecture table
shipped = models.stdout.split("Shipped models", 1)[1].split("Registry models", 1)[0]
assert "digits_vit" in shipped and "digits_deit" in shipped, models.stdout
assert "vit_base_patch16_224" in models.stdout.split("Architectures", 1)[1], models.stdout
lines = [line for line in models.stderr.splitlines() if "using jax" in line]
assert len(lines) == 1, models.stderr
report = run("analyze", "--out", str(work / "report"))
metrics = json.loads((work / "report" / "metrics.json").read_text())
assert metrics["backend"] == "jax" and metrics["images"]["analysed"] > 0
print("fresh jax-only install: vitops models and vitops analyze work; the CLI said:", lines[0])
