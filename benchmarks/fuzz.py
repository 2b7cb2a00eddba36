"""Fuzz vitops' readers with mutated inputs; prints JSON counts.

    KERAS_BACKEND=jax python benchmarks/fuzz.py --cases 2000 --seed 7
    python benchmarks/fuzz.py --cases 2000 --kinds weights --seed 3     # weight files only

Kinds of case (chosen per case; each case is a function of (seed, index) alone, so any case
can be re-run with --start I --cases 1):
  weights  a small vitops file (and the shipped digits_vit) with mutated header bytes, header
           length, data bytes, offsets, shapes, dtypes, tensor names, config fields, metadata (format_version, labels,
           preprocessing), non-finite values; then vitops.load and a forward pass
  hf       a Hugging Face folder with mutated config.json / preprocessor_config.json fields,
           bytes or files; then vitops.convert, and load and run what converts
  images   crafted PNG/JPEG/BMP/TIFF files (headers claiming huge sizes, extreme aspect
           ratios, 16-bit and float pixels, NaN, truncation, byte flips); then preprocess
  states   an analysis state file (`vitops analyze --save-state`) with any field of its study
           metadata or accumulator settings swapped for a value of another JSON type, arrays
           cut, reshaped, recast or dropped, and labels that are paths; then `vitops report`
           into a fresh folder, checking that nothing is written outside it
  names    a folder of images whose names hold markup, mathtext, control characters, bytes
           that are not UTF-8 and formula starts, and a model whose class names hold the same
           and path separators; then `vitops analyze`, checking that nothing lands outside --out
Weight-file and Hugging Face cases also swap any field (a tensor's dtype, shape or offsets, a
config, metadata or preprocessing value) for a value of another JSON type ("type_swap").

A case passes when it raises a vitops error (VitopsError), or succeeds with finite outputs on
finite input. Cases run in a worker process whose address space is capped (RLIMIT_AS: its
size after start-up plus --memory-mb); each case's resident peak (VmHWM, reset before each
case) and time are measured, and a case over --seconds is stopped (SIGALRM). A worker that
dies is restarted after the case that killed it, which counts as a violation. Exit status 1
when any case violates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

KINDS = ("weights", "hf", "images", "states", "names")
# How often each kind is drawn: the weight file is the main contract.
KIND_WEIGHTS = (0.45, 0.12, 0.1, 0.23, 0.1)
# Values a hostile file may put anywhere a number, string or list is expected.
HOSTILE = [
    0,
    -1,
    1,
    3,
    2**31,
    10**6,
    10**9,
    10**30,
    -(10**9),
    1e308,
    -1e-300,
    1e-45,
    4.0,
    64.0,
    0.5,
    True,
    False,
    None,
    "x",
    "",
    "64",
    "vit",
    [],
    {},
    [64],
    [32, 32, 3],
    [32, -32],
    [1e300, 1e300],
    float("inf"),
    float("nan"),
    "\u0000" * 8,
    "a" * 5000,
    {"a": [1, {"b": 2}]},
]
DEEP = "[" * 50000 + "]" * 50000
# One value of every JSON type, and the extremes of each: what a type swap puts in a field.
TYPE_SWAPS = [
    None,
    True,
    False,
    0,
    -1,
    10**200,
    -(10**200),
    2**63,
    1.5,
    -0.0,
    1e308,
    "",
    "F32",
    "x" * 300,
    "../../x",
    [],
    ["F32"],
    [1, 2],
    [[1]],
    {},
    {"a": 1},
    {"dtype": "F32"},
]
# Names a user's files and classes may carry.
HOSTILE_NAMES = [
    "$\\nosuch$",
    "$x^{$",
    "<img src=x onerror=alert(1)>",
    "=cmd|' -C calc'!A0",
    "+1",
    "-2",
    "@SUM(A1)",
    "a\nb",
    "tab\there",
    "\x1b[31mred",
    "\u202eevil",
    "naïve",
    "日本",
    "x" * 200,
]


# ---- the base inputs ----


def base_config():
    from vitops.core.config import ViTConfig

    return ViTConfig(
        image_size=32,
        patch_size=16,
        dim=64,
        depth=2,
        num_heads=2,
        mlp_dim=96,
        num_classes=5,
        family="deit",
        name="fuzz",
    )


def random_params(config, rng):
    from vitops.core.vit import param_shapes

    params = {}
    for k, shape in param_shapes(config).items():
        scale = 1.0 / math.sqrt(shape[0]) if len(shape) == 2 else 0.2
        params[k] = (rng.standard_normal(shape) * scale).astype(np.float32)
        if k.endswith(".scale"):
            params[k] += 1
    return params


def make_bases(folder):
    """The unmutated inputs: a vitops file, a Hugging Face folder, images."""
    import cv2

    import vitops
    from vitops.preprocess import Preprocessing

    rng = np.random.default_rng(12345)
    config = base_config()
    params = random_params(config, rng)
    base = os.path.join(folder, "base.safetensors")
    # labels and preprocessing as plain metadata (the keyword arguments would do the same)
    vitops.save(
        base,
        params,
        config,
        {
            "source_format": "fuzz",
            "labels": json.dumps(["a", "b, c", "d", "e", "f"]),
            "preprocessing": Preprocessing.for_family("deit", 32).to_json(),
        },
    )
    hf = os.path.join(folder, "hf")
    os.makedirs(hf)
    write_hf(hf, params, config)
    from vitops.hub.shipped import model_path as shipped_path

    digits = shipped_path("digits_vit")  # a real file: the shipped digits model
    img = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    images = {ext: cv2.imencode(ext, img)[1].tobytes() for ext in (".png", ".jpg", ".bmp", ".tiff")}
    images[".16.png"] = cv2.imencode(".png", (img.astype(np.uint16) * 257))[1].tobytes()
    images[".f.tiff"] = cv2.imencode(".tiff", img.astype(np.float32) / 255)[1].tobytes()
    weights = [Path(base).read_bytes()] + ([Path(digits).read_bytes()] if digits else [])
    state = os.path.join(folder, "state.safetensors")
    from vitops.app.commands import analyze

    samples = [(rng.random((32, 32, 3)) * 255).astype(np.uint8) for _ in range(6)]
    analyze(
        [str(digits), base],
        [np.stack(samples)],
        None,
        save_state=state,
        progress=False,
        show=2,
        batch_size=4,
        workers=0,
    )
    return {
        "weights": weights,
        "hf": hf,
        "images": images,
        "state": state,
        "digits": str(digits),
        "samples": samples,
    }


def write_hf(folder, params, config):
    """A Hugging Face ViTForImageClassification folder holding `params` (vitops layouts)."""
    from safetensors.numpy import save_file

    d, p = config.dim, config.patch_size
    t = {
        "vit.embeddings.cls_token": params["cls_token"].reshape(1, 1, d),
        "vit.embeddings.position_embeddings": params["pos_embed"][None],
        "vit.embeddings.patch_embeddings.projection.weight": params["patch_embed.kernel"].transpose(
            3, 2, 0, 1
        ),
        "vit.embeddings.patch_embeddings.projection.bias": params["patch_embed.bias"],
        "vit.layernorm.weight": params["norm.scale"],
        "vit.layernorm.bias": params["norm.bias"],
        "classifier.weight": params["head.kernel"].T,
        "classifier.bias": params["head.bias"],
    }
    for i in range(config.depth):
        b, h = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        qkv_k, qkv_b = params[b + "attn.qkv.kernel"], params[b + "attn.qkv.bias"]
        for j, n in enumerate(("query", "key", "value")):
            t[h + f"attention.attention.{n}.weight"] = qkv_k[:, j * d : (j + 1) * d].T
            t[h + f"attention.attention.{n}.bias"] = qkv_b[j * d : (j + 1) * d]
        t.update(
            {
                h + "attention.output.dense.weight": params[b + "attn.proj.kernel"].T,
                h + "attention.output.dense.bias": params[b + "attn.proj.bias"],
                h + "intermediate.dense.weight": params[b + "mlp.fc1.kernel"].T,
                h + "intermediate.dense.bias": params[b + "mlp.fc1.bias"],
                h + "output.dense.weight": params[b + "mlp.fc2.kernel"].T,
                h + "output.dense.bias": params[b + "mlp.fc2.bias"],
                h + "layernorm_before.weight": params[b + "norm1.scale"],
                h + "layernorm_before.bias": params[b + "norm1.bias"],
                h + "layernorm_after.weight": params[b + "norm2.scale"],
                h + "layernorm_after.bias": params[b + "norm2.bias"],
            }
        )
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, os.path.join(folder, "model.safetensors"))
    cfg = {
        "model_type": "vit",
        "hidden_size": d,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.mlp_dim,
        "image_size": config.image_size[0],
        "patch_size": p,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "qkv_bias": True,
        "num_channels": 3,
        "id2label": {str(i): f"class {i}" for i in range(config.num_classes)},
    }
    pre = {
        "do_resize": True,
        "size": {"height": 32, "width": 32},
        "resample": 3,
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
        "do_normalize": True,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f)


# ---- weight-file mutations ----


def split(data):
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header, body, pad=True):
    text = json.dumps(header).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


def pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def tensor_names(header):
    return [k for k in header if k != "__metadata__"]


def mutate_weights(data, rng):
    """(mutation name, bytes) of one mutated vitops file."""
    header, body = split(data)
    n = int.from_bytes(data[:8], "little")
    kind = pick(
        rng,
        [
            "header_bytes",
            "header_length",
            "data_bytes",
            "truncate",
            "extend",
            "config_field",
            "config_text",
            "metadata",
            "dtype",
            "offsets",
            "shape",
            "names",
            "values",
            "type_swap",
            "combined",
        ],
    )
    if kind == "header_bytes":
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            out[8 + int(rng.integers(n))] = int(rng.integers(256))
        return kind, bytes(out)
    if kind == "header_length":
        value = pick(rng, [0, 1, n - 1, n + 1, n + 8, len(data), 2**63, 2**64 - 1, 100 << 20])
        return kind, int(value).to_bytes(8, "little") + data[8:]
    if kind == "data_bytes":
        out = bytearray(data)
        for _ in range(int(rng.integers(1, 9))):
            out[8 + n + int(rng.integers(len(body)))] = int(rng.integers(256))
        return kind, bytes(out)
    if kind == "truncate":
        return kind, data[: int(rng.integers(len(data)))]
    if kind == "extend":
        return kind, data + bytes(rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8))
    meta = header.setdefault("__metadata__", {})
    names = tensor_names(header)
    if kind == "config_field":
        config = json.loads(meta["config"])
        for _ in range(int(rng.integers(1, 3))):
            config[pick(rng, sorted(config) + ["extra"])] = pick(rng, HOSTILE)
        meta["config"] = json.dumps(config)
    elif kind == "config_text":
        meta["config"] = pick(
            rng,
            [
                DEEP,
                "[1, 2]",
                "null",
                "{",
                "",
                '{"depth": 1e999}',
                "NaN",
                json.dumps({"depth": 10**9}),
                "{}" * 1000,
                "x" * 100000,
            ],
        )
    elif kind == "metadata":
        key = pick(rng, ["format", "format_version", "labels", "preprocessing", "config", "crop_pct"])
        if rng.random() < 0.2:
            meta.pop(key, None)
        elif key == "preprocessing":
            pre = json.loads(meta.get("preprocessing", "{}"))
            pre[pick(rng, sorted(pre) + ["extra"])] = pick(rng, HOSTILE)
            meta[key] = json.dumps(pre) if rng.random() < 0.8 else pick(rng, [DEEP, "[]", "{", "null"])
        elif key == "crop_pct":
            meta[key] = pick(rng, ["abc", "0", "-1", "1e999", "nan", "0.9", "1.0", ""])
        elif key == "labels":
            meta[key] = pick(
                rng,
                [
                    json.dumps(["a"] * 4),
                    json.dumps(["a"] * 6),
                    json.dumps([1, 2, 3, 4, 5]),
                    json.dumps(["x" * 5000] * 5),
                    DEEP,
                    "[",
                    "a,b,c",
                    "a,b,c,d,e",
                    "[]",
                    "{}",
                ],
            )
        else:
            meta[key] = pick(rng, ["999", "0", "", "vitops", "1 ", "x" * 10000, "2", "1.0"])
    elif kind == "dtype":
        for name in [pick(rng, names) for _ in range(int(rng.integers(1, 3)))]:
            entry = header[name]
            new = pick(
                rng, ["I32", "U32", "F16", "BF16", "F64", "BOOL", "I8", "U8", "I64", "F8_E4M3", "X", 5]
            )
            entry["dtype"] = new
            if new in ("F16", "BF16") and rng.random() < 0.5 and entry["shape"]:
                entry["shape"] = entry["shape"][:-1] + [entry["shape"][-1] * 2]  # consistent bytes
    elif kind == "offsets":
        a, b = pick(rng, names), pick(rng, names)
        if rng.random() < 0.5:
            header[a]["data_offsets"], header[b]["data_offsets"] = (
                header[b]["data_offsets"],
                header[a]["data_offsets"],
            )
        else:
            begin, end = header[a]["data_offsets"]
            shift = int(pick(rng, [-4, -1, 1, 4, 2**40, -begin - 1]))
            header[a]["data_offsets"] = (
                [begin + shift, end + shift] if rng.random() < 0.5 else [begin, end + shift]
            )
    elif kind == "shape":
        entry = header[pick(rng, names)]
        choice = rng.random()
        if choice < 0.3:
            entry["shape"] = entry["shape"][::-1]
        elif choice < 0.6:
            entry["shape"] = entry["shape"] + [1]
        else:
            entry["shape"] = pick(rng, [[], [0], [-1], [2**62, 2**62], [1.5], "x", [1] * 20])
    elif kind == "names":
        name = pick(rng, names)
        choice = rng.random()
        if choice < 0.4:
            header[name + "X"] = header.pop(name)
        elif choice < 0.7:
            header.pop(name)
        else:
            header["blocks.9999.attn.qkv.kernel"] = dict(header[name])
    elif kind == "values":
        body = bytearray(body)
        name = pick(rng, names)
        begin, end = header[name]["data_offsets"]
        value = pick(rng, [np.nan, np.inf, -np.inf, 1e30, -3e38, 1e7, 5e5])
        position = begin + 4 * int(rng.integers(max(1, (end - begin) // 4)))
        body[position : position + 4] = np.float32(value).tobytes()
        body = bytes(body)
    elif kind == "type_swap":
        return "type_swap:" + swap_any(header, rng), join(header, body)
    elif kind == "combined":
        mutated = data
        steps = []
        for _ in range(int(rng.integers(2, 4))):
            try:
                step, mutated = mutate_weights(mutated, rng)
            except (ValueError, KeyError, TypeError, IndexError, json.JSONDecodeError, UnicodeDecodeError):
                break  # a previous step made the header unparseable for the next: keep it as it is
            steps.append(step)
        return "combined:" + "+".join(steps), mutated
    return kind, join(header, body, pad=rng.random() < 0.9)


def json_paths(value, prefix=()):
    """Every path to a value in a JSON document (keys and list indices), the root excluded."""
    out = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        out.append((*prefix, key))
        out.extend(json_paths(child, (*prefix, key)))
    return out


def swap_at(doc, path, value):
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


def swap_any(header, rng) -> str:
    """Swap one field anywhere in a safetensors header for a value of another JSON type: a
    tensor's dtype, shape or offsets, a metadata value, or a field inside the JSON documents the
    metadata holds (config, preprocessing, labels). Returns the path swapped."""
    meta = header.setdefault("__metadata__", {})
    documents = {k: json.loads(v) for k, v in meta.items() if k in ("config", "preprocessing", "labels")}
    targets = [("header", p) for p in json_paths({k: v for k, v in header.items() if k != "__metadata__"})]
    targets += [("meta", (k,)) for k in meta]
    targets += [(k, p) for k, doc in documents.items() for p in json_paths(doc)]
    where, path = pick(rng, targets)
    value = pick(rng, TYPE_SWAPS)
    if where == "header":
        swap_at(header, path, value)
    elif where == "meta":
        meta[path[0]] = value  # a non-string metadata value: the header itself is malformed
    else:
        swap_at(documents[where], path, value)
        meta[where] = json.dumps(documents[where])
    return f"{where}:{'/'.join(map(str, path))}={str(value)[:20]}"


def run_weights(path, rng):
    import keras

    import vitops

    model = vitops.load(path)
    h, w = model.config.image_size
    x = (rng.standard_normal((1, h, w, 3)) * 2).astype(np.float32)
    out = model(x, return_attention=True, return_dict=True)
    arrays = [out[k] for k in ("logits", "features") if k in out] + list(out["attention"])
    vitops.io.weight_file.read_labels(model.metadata)
    vitops.preprocess.Preprocessing.for_model(model.config, model.metadata)
    return [keras.ops.convert_to_numpy(a) for a in arrays]


# ---- Hugging Face folders ----

HF_KEYS = [
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "image_size",
    "patch_size",
    "layer_norm_eps",
    "hidden_act",
    "qkv_bias",
    "num_channels",
    "id2label",
]
PRE_KEYS = ["size", "crop_size", "do_center_crop", "resample", "image_mean", "image_std", "crop_pct"]


def mutate_hf(base, folder, rng):
    shutil.copytree(base, folder)
    target = pick(rng, ["config.json", "preprocessor_config.json"])
    path = os.path.join(folder, target)
    choice = rng.random()
    if choice < 0.1:
        os.remove(path)
        return f"{target}:removed"
    if choice < 0.25:
        text = pick(rng, [DEEP, "[]", "null", "{", "", "\xff\xfe", '{"a": NaN}', "1e999", "{}" * 10])
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        return f"{target}:text"
    with open(path) as f:
        d = json.load(f)
    keys = HF_KEYS if target == "config.json" else PRE_KEYS
    changed = []
    for _ in range(int(rng.integers(1, 3))):
        key = pick(rng, keys)
        value = pick(
            rng,
            HOSTILE
            + TYPE_SWAPS
            + [
                {"height": -1, "width": 32},
                {"shortest_edge": 0},
                {"0": "a"},
                {"5": "x"},
                {"0": 5},
                [0.5, 0.5],
                2,
                3,
                4,
            ],
        )
        d[key] = value
        changed.append(key)
    with open(path, "w") as f:
        json.dump(d, f)
    return f"{target}:" + ",".join(changed)


def run_hf(folder, rng):
    import vitops

    out = folder + ".safetensors"
    vitops.convert(folder, out)
    return run_weights(out, rng)


# ---- images ----


def png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width, height, depth=8, color=2):
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def mutate_image(bases, rng):
    import cv2

    kind = pick(rng, ["huge_header", "aspect", "bytes", "truncate", "pixel_types", "empty", "garbage"])
    if kind == "huge_header":
        w, h = pick(rng, [(100000, 100000), (2**31 - 1, 1), (1, 2**31 - 1), (0, 0), (0, 10), (20000, 20000)])
        return kind, ".png", png_header_only(w, h)
    if kind == "aspect":
        h, w = pick(rng, [(1, 20000), (20000, 1), (1, 1), (2, 30000), (3, 3)])
        image = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        return kind, ".png", cv2.imencode(".png", image)[1].tobytes()
    if kind in ("bytes", "truncate"):
        ext = pick(rng, sorted(bases))
        data = bytearray(bases[ext])
        if kind == "bytes":
            for _ in range(int(rng.integers(1, 9))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
        else:
            data = data[: int(rng.integers(len(data)))]
        return f"{kind}{ext}", ext.rsplit(".", 1)[-1] and "." + ext.rsplit(".", 1)[-1], bytes(data)
    if kind == "pixel_types":
        choice = pick(rng, ["u16", "f01", "f255", "fnan", "gray", "rgba"])
        base = rng.random((20, 24, 3))
        image = {
            "u16": (base * 65535).astype(np.uint16),
            "f01": base.astype(np.float32),
            "f255": (base * 255).astype(np.float32),
            "fnan": np.full((20, 24, 3), np.nan, np.float32),
            "gray": (base[..., 0] * 255).astype(np.uint8),
            "rgba": (np.concatenate([base, base[..., :1]], -1) * 255).astype(np.uint8),
        }[choice]
        ext = ".tiff" if image.dtype == np.float32 else ".png"
        return f"{kind}:{choice}", ext, cv2.imencode(ext, image)[1].tobytes()
    if kind == "empty":
        return kind, ".png", b""
    return kind, pick(rng, [".png", ".jpg", ".tiff"]), bytes(rng.integers(0, 256, 512, dtype=np.uint8))


def run_image(path, rng):
    from vitops.preprocess import preprocess

    return [preprocess([path], size=32, family="deit")]


# ---- analysis state files ----


def mutate_state(src, dst, rng):
    """Write a mutated copy of a state file; returns what was mutated."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(src, "numpy") as f:
        meta = dict(f.metadata())
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    docs = {"metadata": json.loads(meta["metadata"]), "accumulators": json.loads(meta["accumulators"])}
    kind = pick(rng, ["swap", "swap", "swap", "label", "array", "array", "drop", "claim"])
    if kind in ("swap", "label", "claim"):
        study = docs["metadata"]["study"]
        if kind == "label":
            path, value = (
                ("models", int(rng.integers(2)), "label"),
                pick(rng, ["../../x", "/tmp/x", "a/b", ".", "..", "", "x\x00y", *HOSTILE_NAMES]),
            )
        elif kind == "claim":
            path, value = (
                (pick(rng, ["n_images", "analysed", "cka_batches_skipped"]),),
                pick(rng, [10**5, 10**8, 10**11, 10**30, -5, 2**63]),
            )
        else:
            which = pick(rng, ["metadata", "metadata", "accumulators"])
            target = docs[which]
            path = pick(rng, json_paths(target))
            value = pick(rng, TYPE_SWAPS + HOSTILE)
            swap_at(target, path, value)
            mutation = f"swap:{which}/{'/'.join(map(str, path))}={str(value)[:20]}"
        if kind != "swap":
            swap_at(study, path, value)
            mutation = f"{kind}:{'/'.join(map(str, path))}={str(value)[:20]}"
    else:
        name = pick(rng, sorted(arrays))
        a = arrays[name]
        if kind == "drop":
            arrays.pop(name)
        else:
            change = pick(rng, ["cut", "grow", "reshape", "cast", "empty", "nan"])
            if change == "cut" and a.ndim:
                a = a[: max(0, a.shape[0] - 1)]
            elif change == "grow":
                a = np.concatenate([a.reshape(-1), a.reshape(-1)])
            elif change == "reshape":
                a = a.reshape(-1)[None] if a.ndim < 2 else a.reshape(a.shape[0], -1)
            elif change == "cast":
                a = a.astype(pick(rng, [np.float32, np.int64, np.uint8, np.float64]))
            elif change == "empty":
                a = np.zeros((0,) + a.shape[1:], a.dtype)
            elif change == "nan" and a.dtype.kind == "f":
                a = np.full_like(a, np.nan)
            arrays[name] = np.ascontiguousarray(a)
            kind = f"array:{change}"
        mutation = f"{kind}:{name}"
    meta["metadata"], meta["accumulators"] = json.dumps(docs["metadata"]), json.dumps(docs["accumulators"])
    save_file(arrays, dst, metadata=meta)
    return mutation


def run_state(path, rng):
    from vitops.app.commands import report_from_states

    report_from_states([path], os.path.join(os.path.dirname(path), "out", "report"))
    return []


# ---- hostile names ----


def make_names_case(bases, folder, rng):
    """A folder of images with hostile names and a model with hostile class names."""
    import cv2

    import vitops

    images = os.path.join(folder, "images")
    os.makedirs(images)
    count = int(rng.integers(1, 6))
    for i in range(count):
        name = pick(rng, HOSTILE_NAMES)
        raw = (
            os.fsencode(f"{i}-{name}.png".replace("/", "_")) if rng.random() < 0.7 else b"%d-\xff\xfe.png" % i
        )
        ok, data = cv2.imencode(".png", bases["samples"][i % len(bases["samples"])])
        with open(os.path.join(os.fsencode(images), raw), "wb") as f:
            f.write(data.tobytes())
    params, config = vitops.load_params(bases["digits"])
    labels = [
        pick(rng, HOSTILE_NAMES + ["../../x", "a/b/c", "\\server\\share"]) for _ in range(config.num_classes)
    ]
    model = os.path.join(folder, pick(rng, ["m", "$m$", "<b>m<_b>", "=m", "-m"]) + ".safetensors")
    vitops.save(model, params, config, labels=labels)
    return f"{count} images, labels {labels[:2]}", images, model


def run_names(path, rng):
    from vitops.app.commands import analyze

    folder = os.path.dirname(path)
    model = next(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))
    summary = analyze(model, [path], os.path.join(folder, "out", "report"), progress=False, show=4, workers=0)
    if summary["images"]["analysed"] == 0:
        raise AssertionError("no image analysed")
    return []


# ---- running cases ----


def make_case(index, seed, bases, folder, kinds=KINDS):
    """(kind, mutation, runner, path, rng) of case `index`: a function of (seed, index, kinds)."""
    rng = np.random.default_rng([seed, index])
    weights = np.array([w for k, w in zip(KINDS, KIND_WEIGHTS) if k in kinds])
    kind = [k for k in KINDS if k in kinds][int(rng.choice(len(weights), p=weights / weights.sum()))]
    if kind == "weights":
        which = int(rng.integers(len(bases["weights"])))
        mutation, data = mutate_weights(bases["weights"][which], rng)
        mutation = f"{('fuzz', 'digits')[which]}:{mutation}"
        path = os.path.join(folder, f"case{index}.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        return kind, mutation, run_weights, path, rng
    if kind == "hf":
        path = os.path.join(folder, f"case{index}")
        mutation = mutate_hf(bases["hf"], path, rng)
        return kind, mutation, run_hf, path, rng
    if kind == "states":
        path = os.path.join(folder, f"case{index}.safetensors")
        mutation = mutate_state(bases["state"], path, rng)
        return kind, mutation, run_state, path, rng
    if kind == "names":
        mutation, path, _ = make_names_case(bases, folder, rng)
        return kind, mutation, run_names, path, rng
    mutation, ext, data = mutate_image(bases["images"], rng)
    path = os.path.join(folder, f"case{index}{ext}")
    with open(path, "wb") as f:
        f.write(data)
    return kind, mutation, run_image, path, rng


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
        return True
    except OSError:
        return False


def _tree(folder) -> set:
    """Every path under folder."""
    out = set()
    for root, dirs, files in os.walk(folder):
        out.update(os.path.join(root, n) for n in dirs + files)
    return out


def _outside(folder, case_dir, path, before) -> list:
    """What a case left outside where its outputs belong: its out/ folder, and (a conversion's
    destination) the case's path plus ".safetensors"."""
    allowed = (os.path.join(case_dir, "out"), path + ".safetensors")
    return sorted(p for p in _tree(folder) - before if not p.startswith(allowed))


class CaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise CaseTimeout


def worker(args):
    """Run cases start..start+count-1, one JSON line each (a "start" line first, flushed, so
    the parent knows which case killed a dead worker)."""
    import vitops

    folder = tempfile.mkdtemp(prefix="vitops-fuzz-")
    try:
        bases = make_bases(folder)
        for i, data in enumerate(bases["weights"]):  # warm up: first calls compile the backend's ops
            with open(os.path.join(folder, f"warm{i}.safetensors"), "wb") as f:
                f.write(data)
            run_weights(os.path.join(folder, f"warm{i}.safetensors"), np.random.default_rng(0))
        run_image_path = os.path.join(folder, "warm.png")
        with open(run_image_path, "wb") as f:
            f.write(bases["images"][".png"])
        run_image(run_image_path, None)
        # Reports and analyses pay once for importing matplotlib, compiling the analysis pass
        # and building fonts: warmed up too, so that the time limit is a case's own time.
        if "states" in args.kinds:
            warm_state = os.path.join(folder, "warm-state", "state.safetensors")
            os.makedirs(os.path.dirname(warm_state))
            shutil.copyfile(bases["state"], warm_state)
            run_state(warm_state, None)
        if "names" in args.kinds:
            warm_names = os.path.join(folder, "warm-names")
            os.makedirs(warm_names)
            _, names_path, _ = make_names_case(bases, warm_names, np.random.default_rng(0))
            run_names(names_path, None)
        limit = (_status_kb("VmSize") + args.memory_mb * 1024) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        signal.signal(signal.SIGALRM, _alarm)
        for index in range(args.start, args.start + args.cases):
            print(json.dumps({"start": index}), flush=True)
            case_dir = os.path.join(folder, f"c{index}")
            os.makedirs(case_dir)
            record = {"i": index}
            try:
                kind, mutation, runner, path, rng = make_case(index, args.seed, bases, case_dir, args.kinds)
                record.update(kind=kind, mutation=mutation)
                peak_ok = _reset_peak()
                base_kb = _status_kb("VmRSS")
                t0 = time.perf_counter()
                signal.setitimer(signal.ITIMER_REAL, args.seconds)
                before = _tree(folder)
                try:
                    outputs = runner(path, rng)
                    finite = all(np.all(np.isfinite(np.asarray(o, np.float64))) for o in outputs)
                    record["outcome"] = "loaded" if finite else "violation"
                    if not finite:
                        record["detail"] = "non-finite output on finite input"
                except vitops.VitopsError as e:
                    record["outcome"] = type(e).__name__
                    record["message_chars"] = len(str(e))
                    if len(str(e)) > 4000:
                        record.update(
                            outcome="violation", detail=f"error message of {len(str(e)):,} characters"
                        )
                except CaseTimeout:
                    record.update(outcome="violation", detail=f"over {args.seconds} s")
                except BaseException as e:  # noqa: BLE001 - exactly what the fuzzer looks for
                    record.update(outcome="violation", detail=f"{type(e).__name__}: {str(e)[:300]}")
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                record["seconds"] = round(time.perf_counter() - t0, 4)
                outside = _outside(folder, case_dir, path, before)
                if outside:
                    record.update(outcome="violation", detail=f"wrote outside its folder: {outside[:3]}")
                if peak_ok:
                    record["peak_mb"] = round((_status_kb("VmHWM") - base_kb) / 1024, 1)
            except BaseException as e:  # noqa: BLE001 - a broken generator must not hide as a pass
                record.update(outcome="violation", detail=f"case generation: {type(e).__name__}: {e}")
            shutil.rmtree(case_dir, ignore_errors=True)
            print(json.dumps(record), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(args) -> dict:
    """Run every case in worker processes; restart after a worker dies. Returns the summary."""
    records, index, end = [], args.start, args.start + args.cases
    while index < end:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--worker",
            "--seed",
            str(args.seed),
            "--start",
            str(index),
            "--cases",
            str(end - index),
            "--memory-mb",
            str(args.memory_mb),
            "--seconds",
            str(args.seconds),
            "--kinds",
            ",".join(args.kinds),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        started = None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue  # a library printed something
            if "start" in msg:
                started = msg["start"]
            elif "i" in msg:
                records.append(msg)
                index = msg["i"] + 1
                started = None
        proc.wait()
        if index < end:  # the worker died in case `started` (or before its first)
            died = started if started is not None else index
            records.append(
                {"i": died, "outcome": "violation", "detail": f"worker died (exit status {proc.returncode})"}
            )
            index = died + 1
    return summarize(records, args)


def summarize(records, args) -> dict:
    outcomes, kinds = {}, {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
        kinds[r.get("kind", "?")] = kinds.get(r.get("kind", "?"), 0) + 1
    violations = [r for r in records if r["outcome"] == "violation"]
    timed = [r for r in records if "seconds" in r]
    peaks = [r for r in records if "peak_mb" in r]
    slowest = max(timed, key=lambda r: r["seconds"], default=None)
    largest = max(peaks, key=lambda r: r["peak_mb"], default=None)
    return {
        "seed": args.seed,
        "start": args.start,
        "cases": len(records),
        "kinds": kinds,
        "backend": os.environ.get("KERAS_BACKEND", "tensorflow (Keras' default)"),
        "outcomes": outcomes,
        "loaded_by_kind": {
            k: sum(1 for r in records if r.get("kind") == k and r["outcome"] == "loaded") for k in kinds
        },
        "violations": violations[:50],
        "violation_count": len(violations),
        "max_seconds": slowest and slowest["seconds"],
        "slowest": slowest,
        "max_peak_mb": largest and largest["peak_mb"],
        "largest": largest,
        "max_message_chars": max((r.get("message_chars", 0) for r in records), default=0),
        "limits": {"memory_mb": args.memory_mb, "seconds": args.seconds},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index (re-run one case)")
    parser.add_argument(
        "--memory-mb", type=int, default=1024, help="address space per worker beyond start-up"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="time budget per case")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated subset of {', '.join(KINDS)}"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.kinds = tuple(k for k in args.kinds.split(",") if k)
    if not args.kinds or set(args.kinds) - set(KINDS):
        parser.error(f"--kinds takes a comma-separated subset of {', '.join(KINDS)}")
    if args.worker:
        worker(args)
        return 0
    summary = run(args)
    print(json.dumps(summary, indent=1))
    return 1 if summary["violation_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
