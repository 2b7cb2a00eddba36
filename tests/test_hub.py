"""Registry downloads against a real HTTP server on 127.0.0.1: good checksum, bad checksum,
dropped connection, no server; the cache never keeps a broken file. And the shipped registry."""

import hashlib
import io
import json

import keras
import numpy as np
import pytest
from helpers.timm_reference import TINY, make_timm, rel_err, timm_outputs

import vitops
from vitops import hub
from vitops.converters import FORMATS
from vitops.core.variants import get_config
from vitops.errors import HubError
from vitops.hub.registry import PUBLISHED_SCORES

# The reference implementations: without them the module is skipped, not an error.
torch = pytest.importorskip("torch")


@pytest.fixture
def server(file_server):
    """The local server's URL; FILES (below) are the files it serves."""
    url, files = file_server
    files.clear()
    global FILES
    FILES = files
    return url


FILES: dict = {}


@pytest.fixture
def checkpoint(server):
    ref = make_timm("deit_tiny_distilled_patch16_224", **TINY, num_classes=3)
    buf = io.BytesIO()
    torch.save({"model": ref.state_dict()}, buf)
    FILES["deit_tiny.pth"] = buf.getvalue()
    return ref, buf.getvalue()


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VITOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VITOPS_NO_PROGRESS", "1")
    return tmp_path


def write_registry(tmp_path, monkeypatch, **entry):
    base = {"name": "tiny", "arch": None, "family": "deit", "format": "deit", "sha256": None}
    base.update(entry)
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"models": [base]}))
    monkeypatch.setenv("VITOPS_REGISTRY", str(path))


def cache_files(tmp_path):
    root = tmp_path / "home"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_download_verify_convert_then_offline(env, server, checkpoint, monkeypatch):
    ref, data = checkpoint
    digest = hashlib.sha256(data).hexdigest()
    write_registry(env, monkeypatch, source={"url": f"{server}/files/deit_tiny.pth"}, sha256=digest)
    model = vitops.load("tiny")
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    assert rel_err(keras.ops.convert_to_numpy(model(images)), timm_outputs(ref, images)["output"]) <= 1e-4
    assert cache_files(env) == ["checksums.json", "models/tiny.json", "models/tiny.safetensors"]
    assert json.loads((env / "home" / "checksums.json").read_text()) == {"tiny": digest}
    # later loads are offline: the server is not asked again
    FILES.pop("deit_tiny.pth")
    again = vitops.load("tiny")
    assert again.config == model.config


def test_checksum_recorded_at_first_download_and_checked_later(env, server, checkpoint, monkeypatch):
    _, data = checkpoint
    write_registry(env, monkeypatch, source={"url": f"{server}/files/deit_tiny.pth"})
    hub.fetch("tiny")
    recorded = json.loads((env / "home" / "checksums.json").read_text())["tiny"]
    assert recorded == hashlib.sha256(data).hexdigest()
    # the cached file is damaged: the next use notices, removes it, and says so
    cached = env / "home" / "models" / "tiny.safetensors"
    cached.write_bytes(cached.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(HubError, match="damaged"):
        vitops.load("tiny")
    assert not cached.exists()
    # the source changed upstream: the re-download no longer matches the recorded checksum
    FILES["deit_tiny.pth"] = data[:-4] + b"XXXX"
    with pytest.raises(HubError, match="first download had sha256"):
        vitops.load("tiny")
    assert cache_files(env) == ["checksums.json"]


def test_bad_checksum_keeps_nothing(env, server, checkpoint, monkeypatch):
    write_registry(env, monkeypatch, source={"url": f"{server}/files/deit_tiny.pth"}, sha256="0" * 64)
    with pytest.raises(HubError, match="checksum mismatch"):
        vitops.load("tiny")
    assert cache_files(env) == []


def test_sha256_prefix_of_release_names(env, server, checkpoint, monkeypatch):
    _, data = checkpoint
    good = hashlib.sha256(data).hexdigest()[:8]
    write_registry(
        env, monkeypatch, source={"url": f"{server}/files/deit_tiny.pth"}, sha256_prefix="deadbeef"
    )
    with pytest.raises(HubError, match="prefix deadbeef"):
        hub.fetch("tiny")
    write_registry(env, monkeypatch, source={"url": f"{server}/files/deit_tiny.pth"}, sha256_prefix=good)
    assert hub.fetch("tiny").exists()


def test_dropped_connection_keeps_nothing(env, server, checkpoint, monkeypatch):
    write_registry(env, monkeypatch, source={"url": f"{server}/drop/deit_tiny.pth"})
    with pytest.raises(HubError, match="interrupted|connection dropped"):
        vitops.load("tiny")
    assert cache_files(env) == []


def test_no_server_is_a_clear_error(env, monkeypatch):
    import socket

    # A port bound and never listened on, for the whole test: connections to it are refused,
    # and no other process (a test beside this one) can take it meanwhile.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        write_registry(env, monkeypatch, source={"url": f"http://127.0.0.1:{port}/x.pth"})
        with pytest.raises(HubError, match="no network"):
            vitops.load("tiny")
    assert cache_files(env) == []


def test_hub_source_offline_is_a_clear_error(env, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: set what it reads, or the test
    # waits for network timeouts instead of taking the offline path
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    write_registry(
        env,
        monkeypatch,
        source={"hf_repo": "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k", "filename": "model.safetensors"},
    )
    with pytest.raises(HubError, match="Hugging Face hub failed"):
        vitops.load("tiny")
    assert [f for f in cache_files(env) if f.startswith("models")] == []


def test_unknown_name(env):
    with pytest.raises(vitops.WeightFileError, match="no such weight file"):
        vitops.load("no_such_model")
    with pytest.raises(HubError, match="unknown model"):
        hub.fetch("no_such_model")


def test_every_registry_entry_is_well_formed():
    entries = hub.registry()
    required = {
        "vit_b16_in21k_ft_in1k",
        "vit_b16_in1k",
        "vit_ti16_augreg",
        "vit_s16_augreg",
        "vit_b16_augreg",
        "vit_l16_augreg",
        "dino_vits16",
        "dino_vits8",
        "dino_vitb16",
        "dino_vitb8",
    }
    for size in ("tiny", "small", "base"):
        required |= {f"deit_{size}_patch16_224", f"deit_{size}_distilled_patch16_224"}
    required |= {"deit_base_patch16_384", "deit_base_distilled_patch16_384"}
    for short in "sblg":
        required |= {f"dinov2_vit{short}14", f"dinov2_vit{short}14_reg4"}
    required |= {f"deit3_{size}_patch16_224" for size in ("small", "base", "large")}
    required |= {"clip_vitb16_openai", "clip_vitl14_openai", "siglip_vitb16_webli"}
    required |= {f"dinov3_vit{short}16" for short in "sbl"}
    assert required <= set(entries)
    for name, e in entries.items():
        config = get_config(e["arch"])
        assert e["family"] == config.family, name
        assert e["format"] in FORMATS, name
        src = e["source"]
        assert src.get("url", "").startswith("https://") or {"hf_repo", "filename"} <= set(src), name
        assert e["sha256"] is None or len(e["sha256"]) == 64, name
        if "sha256_prefix" in e:
            assert src["url"].endswith(f"-{e['sha256_prefix']}.pth"), name
        else:
            assert "first download" in e["checksum"], name
        pre = e["preprocessing"]
        assert pre["size"] == config.image_size[0] and len(pre["mean"]) == len(pre["std"]) == 3, name
        assert e["license"], name
        pub = e["published"]
        assert pub["source"], name
        numbers = [v for k, v in pub.items() if k.startswith("imagenet")]
        assert all(v is None or 50 < v < 100 for v in numbers), name
        if config.family in ("dino", "dinov2"):
            assert pub["imagenet_knn"] and pub["imagenet_linear"], name
        if config.family in ("clip", "siglip"):
            assert pub["imagenet_zeroshot"] and config.act == (
                "quick_gelu" if "openai" in name else "gelu"
            ), name
        assert {k for k in pub if k.startswith("imagenet")} <= set(PUBLISHED_SCORES), name
        assert (config.reg_tokens == 4) == ("reg4" in name or config.family == "dinov3"), name
