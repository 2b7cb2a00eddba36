"""The cache stays inside VITOPS_HOME: registry names and source file names are plain names,
'~' is expanded, and a damaged cache index is reported, not trusted or silently reset."""

import io
import json
import os

import pytest
from helpers.timm_reference import TINY, make_timm

from vitops import hub
from vitops.errors import HubError

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")


@pytest.fixture
def served(file_server):
    url, files = file_server
    buf = io.BytesIO()
    torch.save(
        {"model": make_timm("deit_tiny_distilled_patch16_224", **TINY, num_classes=3).state_dict()}, buf
    )
    files["deit_tiny.pth"] = buf.getvalue()
    return f"{url}/files/deit_tiny.pth"


def use_registry(tmp_path, monkeypatch, *entries):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": list(entries)}))
    monkeypatch.setenv("VITOPS_REGISTRY", str(path))
    monkeypatch.setenv("VITOPS_HOME", str(tmp_path / "deep" / "home"))
    monkeypatch.setenv("VITOPS_NO_PROGRESS", "1")


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("name", ["../../outside", "../outside", "/tmp/outside", "a/b", "..", "~x", ""])
def test_registry_names_cannot_leave_the_cache(tmp_path, monkeypatch, served, name):
    use_registry(tmp_path, monkeypatch, {"name": name, "format": "deit", "source": {"url": served}})
    with pytest.raises(HubError, match="is not a plain name"):
        hub.fetch(name)  # the old code wrote tmp_path/deep/outside.safetensors and the like
    with pytest.raises(HubError, match="not a registry model name"):
        hub.cached_path(name)
    assert files_under(tmp_path) == ["registry.json"]


@pytest.mark.parametrize(
    "source",
    [
        {"url": "http://h/a/.."},
        {"url": "http://h/"},
        {"url": "http://h/x.exe"},
        {"url": "file:///etc/passwd"},
        {"hf_repo": "../x", "filename": "m.safetensors"},
        {"hf_repo": "a/b", "filename": "../../m.safetensors"},
        {},
    ],
)
def test_source_file_names_are_checked(tmp_path, monkeypatch, source):
    use_registry(tmp_path, monkeypatch, {"name": "ok", "source": source})
    with pytest.raises(HubError, match="bad registry entries: ok: source"):
        hub.registry()


def test_a_tilde_in_vitops_home_is_expanded(tmp_path, monkeypatch, served):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)
    use_registry(tmp_path, monkeypatch, {"name": "tiny", "format": "deit", "source": {"url": served}})
    monkeypatch.setenv("VITOPS_HOME", "~/cache")
    assert hub.home() == tmp_path / "user" / "cache"
    hub.fetch("tiny")
    assert not (tmp_path / "~").exists()  # the old code made a folder literally named '~'
    assert "models/tiny.safetensors" in files_under(tmp_path / "user" / "cache")


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"tiny": 5}), "\xff\xfe"])
def test_a_damaged_cache_index_is_reported_not_trusted(tmp_path, monkeypatch, served, content):
    use_registry(tmp_path, monkeypatch, {"name": "tiny", "format": "deit", "source": {"url": served}})
    index = tmp_path / "deep" / "home" / "checksums.json"
    index.parent.mkdir(parents=True)
    index.write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(HubError, match=f"{index}.*(remove it|not valid JSON|top level|not UTF-8)"):
        hub.fetch("tiny")
    assert files_under(tmp_path / "deep" / "home") == ["checksums.json"]


def test_a_registry_entry_that_is_not_valid_is_named(tmp_path, monkeypatch):
    use_registry(
        tmp_path,
        monkeypatch,
        {
            "name": "ok",
            "arch": "vit_gigantic",
            "sha256": "xyz",
            "preprocessing": {"crop_pct": 7},
            "source": {"url": "https://h/m.pth"},
        },
    )
    with pytest.raises(HubError) as info:
        hub.registry()
    message = str(info.value)
    assert str(tmp_path / "registry.json") in message
    for part in ("unknown architecture 'vit_gigantic'", "sha256 'xyz'", "crop_pct must be"):
        assert part in message
    (tmp_path / "registry.json").write_text("[" * 100_000)
    with pytest.raises(HubError, match="registry.json"):
        hub.registry()
    os.remove(tmp_path / "registry.json")
    with pytest.raises(HubError, match="cannot read the registry .*no such file"):
        hub.registry()
