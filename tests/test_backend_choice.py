"""Choosing a backend before Keras is imported: KERAS_BACKEND wins; else Keras' configured one if
installed; else an installed one (jax, torch, tensorflow); with none, one line naming the extras.
(The real jax-only install is the nox session `install-jax`.)"""

import json

import pytest

from vitops.app.cli import main
from vitops.backend import select as _select


@pytest.fixture
def clean(monkeypatch, tmp_path):
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(_select, "_OUTCOME", None)  # decided once per process: decide again here
    return tmp_path


def test_configured_backend_missing_picks_an_installed_one(clean, monkeypatch):
    monkeypatch.setattr(_select, "installed", lambda b: b in ("torch", "tensorflow"))
    (clean / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert _select.choose_backend() == ("torch", None)
    assert __import__("os").environ["KERAS_BACKEND"] == "torch"


def test_installed_configured_backend_and_explicit_choice_are_left_alone(clean, monkeypatch):
    monkeypatch.setattr(_select, "installed", lambda b: b == "tensorflow")
    assert _select.choose_backend() == (None, None)  # keras.json absent: tensorflow, installed
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setattr(_select, "installed", lambda b: False)
    monkeypatch.setattr(_select, "_OUTCOME", None)
    assert _select.choose_backend() == (None, None)  # the user's choice, even if missing


def test_no_backend_at_all_is_one_line(clean, monkeypatch, capsys):
    monkeypatch.setattr(_select, "installed", lambda b: False)
    chosen, problem = _select.choose_backend()
    assert chosen is None and "vitops[jax]" in problem
    assert main(["models"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'vitops[jax]'" in err[0]
