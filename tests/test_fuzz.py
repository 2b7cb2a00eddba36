"""Hostile inputs: mutated weight files, Hugging Face folders, crafted images, edited analysis
states and hostile file and class names raise only vitops errors, write nothing outside the
output folder, within a memory ceiling and a time budget per case, and whatever loads gives
finite outputs on finite input. The cases come from benchmarks/fuzz.py (long runs: its
--cases and --seed), run here on this backend in its memory-capped worker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras

FUZZ = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz.py"
# The files are read the same way on every backend: the full run on jax, half on the others.
CASES, SEED = (240 if keras.config.backend() == "jax" else 120), 1
# A case's time includes drawing a whole report when a mutated state still loads: the slowest
# such case took 10.1 s on tensorflow (4.8 s on jax) with another test process beside it on a
# 2-core machine (the suite runs in parallel workers). 30 s still stops any case that hangs
# or works through what a hostile header claims.
MEMORY_MB, SECONDS = 1024, 30


def test_mutated_inputs_raise_only_vitops_errors():
    env = dict(os.environ, KERAS_BACKEND=keras.config.backend())
    proc = subprocess.run(
        [
            sys.executable,
            str(FUZZ),
            "--cases",
            str(CASES),
            "--seed",
            str(SEED),
            "--memory-mb",
            str(MEMORY_MB),
            "--seconds",
            str(SECONDS),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    summary = json.loads(proc.stdout)
    assert summary["violations"] == [], json.dumps(summary["violations"], indent=1)
    assert proc.returncode == 0 and summary["cases"] == CASES
    # every kind ran, and each had cases that loaded (finite outputs checked) and cases refused
    assert set(summary["kinds"]) == {"weights", "hf", "images", "states", "names"}
    assert all(n > 0 for n in summary["loaded_by_kind"].values()), summary["loaded_by_kind"]
    assert {"WeightFileError", "ConversionError", "ImageError", "AnalysisError"} <= set(summary["outcomes"])
    assert summary["max_seconds"] < SECONDS
    assert summary["max_peak_mb"] < MEMORY_MB
    assert summary["max_message_chars"] < 4000
