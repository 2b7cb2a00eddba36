"""The report's attention explorer: where every token of a sample image looks, for a few blocks,
carried inside report.html.

For each sample image (`--show K`) and model the run keeps, for each explored block
(`--explore-blocks`, by default the last), every head's attention map and their mean
(n, H + 1, T, T), and the attention rollout through all blocks (T, T), every row a query
token: class token, distillation token, registers, then patches in row-major order.

The page carries them quantised: each row's (one query's) attention to the patches is divided
by its maximum over the patches and rounded to 2^bits - 1 levels, the maximum kept as float32
beside its attention to the prefix tokens (float16); deflated (zlib) and base64-encoded, then
inflated by the browser's DecompressionStream. A displayed value is within one step (the
row's maximum over the patches / (2^bits - 1)) of the model's. `bits` is
the finest of BITS whose maps fit in what the figures leave of `--report-mb`; when even the
coarsest does not, the page leaves the explorer out and says what it would need.

Shapes: S sample images, n explored blocks, H heads, T tokens (prefix + patches), Y, X pixels.
"""

from __future__ import annotations

import base64
import json
import zlib

import cv2
import numpy as np

from ..analysis.rollout import attention_rollout
from ..errors import AnalysisError, clip

BITS = (8, 6, 5, 4, 3)  # the finest that fits the page's budget is used
# The run keeps the sample images' maps (float16) only while they are at most this many times
# the page's size (--report-mb): beyond that not even 3-bit codes deflated would fit, and at
# high resolution (ViT-S/16 at 1024 px: 235 MB per image for one block) they would cost
# memory for nothing.
KEEP_FACTOR = 16
JPEG_QUALITY = 85  # the sample images under the maps
# `collect` holds every block's float32 maps of one image at once (the rollout needs them all):
# a model whose maps of one image exceed this is left out of the explorer (DINOv2 ViT-L/14 at
# 518 px: 2.9 GB).
PASS_BYTES = 1 << 30


def parse_blocks(spec) -> str:
    """`--explore-blocks` checked and normalised: "last", "all", "none" or block numbers
    (1 = the first block) as "1,6,12", sorted, without repeats."""
    if not isinstance(spec, str):
        raise AnalysisError(
            f"explore blocks must be 'last', 'all', 'none' or block numbers, got {clip(spec)}"
        )
    s = spec.strip().lower()
    if s in ("last", "all", "none"):
        return s
    try:
        numbers = sorted({int(p) for p in s.split(",")})
    except ValueError:
        numbers = []
    if not numbers or numbers[0] < 1:
        raise AnalysisError(
            "explore blocks must be 'last', 'all', 'none' or block numbers from 1 separated by "
            f"commas (e.g. 1,6,12), got {clip(spec)}"
        )
    return ",".join(map(str, numbers))


def blocks_of(spec: str, depth: int, label: str = "the model") -> tuple[int, ...]:
    """The explored blocks of a model, 0-based."""
    if spec == "none":
        return ()
    if spec == "last":
        return (depth - 1,)
    if spec == "all":
        return tuple(range(depth))
    numbers = [int(p) for p in spec.split(",")]
    if numbers[-1] > depth:
        raise AnalysisError(f"explore blocks {spec}: {label} has {depth} blocks")
    return tuple(n - 1 for n in numbers)


def tokens(config, grid) -> int:
    """T: the prefix tokens and the patches of the grid the images were analysed at (which
    may differ from the model's native `config.num_tokens`)."""
    return config.num_prefix_tokens + grid[0] * grid[1]


def kept_bytes(config, grid, settings) -> int:
    """Bytes of float16 maps the run keeps for one model's sample images."""
    n = len(blocks_of(settings.explore_blocks, config.depth))
    t = tokens(config, grid)
    return settings.show * (n * (config.num_heads + 1) + 1) * t * t * 2


def left_out(config, grid, settings) -> str | None:
    """Why the run does not keep this model's explorer maps ("" when none were asked for), or
    None when it keeps them. Decided by the config and the settings alone: every shard agrees."""
    if settings.show == 0 or not blocks_of(settings.explore_blocks, config.depth):
        return ""
    t = tokens(config, grid)
    held = config.depth * config.num_heads * t * t * 4
    if held > PASS_BYTES:
        return (
            f"one image's attention in every block takes {held / 1e9:.1f} GB, above the "
            f"{PASS_BYTES / 1e9:.1f} GB the explorer may hold"
        )
    kept = kept_bytes(config, grid, settings)
    if kept > budget(settings) * KEEP_FACTOR:
        return (
            f"its sample images' maps take {kept / 1e6:,.1f} MB as float16, more than --report-mb could hold"
        )
    return None


def keeps_maps(config, grid, settings) -> bool:
    """Whether the run keeps the explorer's maps of this model (`left_out`)."""
    return left_out(config, grid, settings) is None


def budget(settings) -> int:
    return int(settings.report_mb * 1e6)  # MB as the page's size is counted


def collect(model, images, settings) -> tuple[np.ndarray, np.ndarray]:
    """The sample images' (S, Y, X, 3 preprocessed) maps: (S, n, H + 1, T, T) attention of the
    explored blocks, heads then their mean, and (S, T, T) the rollout through all blocks with the
    run's head fusion and discard ratio; both float16. One image at a time: every block's
    maps of one image exist at once."""
    blocks = blocks_of(settings.explore_blocks, model.config.depth)
    maps, rollouts = [], []
    for x in np.asarray(images, np.float32):
        attention = model.infer(x[None], return_attention=True)["attention"]  # L x (1, H, T, T)
        picked = np.stack([np.asarray(attention[b][0], np.float32) for b in blocks])  # (n, H, T, T)
        maps.append(np.concatenate([picked, picked.mean(axis=1, keepdims=True)], axis=1).astype(np.float16))
        r = attention_rollout(attention, settings.head_fusion, settings.discard_ratio)
        rollouts.append(np.asarray(r, np.float32)[0].astype(np.float16))
    return np.stack(maps), np.stack(rollouts)


def query_names(config) -> list[str]:
    """The prefix tokens' names in sequence order (the patches follow)."""
    names = ["class token"] if config.class_token else []
    if config.distilled:
        names.append("distillation token")
    return names + [f"register {i + 1}" for i in range(config.reg_tokens)]


def quantise(rows: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(R, T) maps -> codes (R, T) uint8 in [0, 2^bits - 1] and each row's maximum (R,) float32;
    a value is code / (2^bits - 1) * maximum, within half a step of the map."""
    levels = (1 << bits) - 1
    rows = np.nan_to_num(np.asarray(rows, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = rows.max(axis=-1)
    safe = np.where(top > 0, top, 1.0)[:, None]
    codes = np.clip(np.rint(np.clip(rows, 0, None) / safe * levels), 0, levels).astype(np.uint8)
    return codes, top


def _blob(maps: np.ndarray, rollout: np.ndarray, prefix: int, bits: int) -> str:
    """One model's one image, rows the explored blocks' heads and mean then the rollout (R rows
    of T keys): [patch maxima float32 (R,)][prefix keys float16 (R, P)][patch codes uint8 (R, N)],
    deflated, base64. The patches are quantised apart from the prefix keys: a class token or a
    register that takes most of a row would otherwise leave the patches a level or two."""
    t = rollout.shape[-1]
    rows = np.concatenate([maps.reshape(-1, t), rollout.reshape(-1, t)]).astype(np.float32)
    codes, top = quantise(rows[:, prefix:], bits)
    raw = top.astype("<f4").tobytes() + rows[:, :prefix].astype("<f2").tobytes() + codes.tobytes()
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def _jpeg(display: np.ndarray) -> str:
    ok, data = cv2.imencode(
        ".jpg", np.ascontiguousarray(display[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise AnalysisError("could not encode a sample image as JPEG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def embedded_json(value) -> str:
    """JSON to embed in a <script> element: no "</script>" or "<!--" in a file name or a label
    can end or open anything."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def page_data(study, room: int) -> dict:
    """What the page's explorer reads (JSON-able): {"bits", "bytes", "models": [...]} with the
    maps of every model that kept them, at the finest BITS whose whole entry (maps, images,
    names) takes at most `room` bytes; or {"omitted": reason} when there is nothing to explore
    (reason "") or it does not fit."""
    s = study.settings
    shown = [ms for ms in study.models if not ms.samples.empty]
    kept = [ms for ms in shown if ms.samples.arrays["explorer"].size]
    reasons = {ms.label: left_out(ms.config, ms.grid, s) for ms in shown if ms not in kept}
    reasons = {label: why for label, why in reasons.items() if why}
    advice = "raise --report-mb, explore fewer blocks (--explore-blocks) or show fewer images (--show)"
    if not kept:
        if reasons:
            return {"omitted": "; ".join(f"{label}: {why}" for label, why in reasons.items()) + f"; {advice}"}
        return {"omitted": ""}
    images = [[_jpeg(d) for d in ms.samples.arrays["display"]] for ms in kept]  # the same at every bits
    for bits in BITS:
        data = {"bits": bits, "models": [_model_data(ms, s, bits, jpegs) for ms, jpegs in zip(kept, images)]}
        if reasons:
            data["left_out"] = reasons
        size = len(embedded_json(data))
        if size <= room:
            return {**data, "bytes": size}
    also = "".join(f"; {label}: {why}" for label, why in reasons.items())
    return {
        "omitted": f"the sample images' attention maps would take {size / 1e6:.1f} MB even at {BITS[-1]} bits per "
        f"value, and the figures leave {max(room, 0) / 1e6:.1f} MB of --report-mb {s.report_mb:g}{also}; {advice}"
    }


def _model_data(ms, settings, bits: int, images: list[str]) -> dict:
    a = ms.samples.arrays
    c = ms.config
    return {
        "label": ms.label,
        "grid": list(ms.grid),
        "prefix": query_names(c),
        "heads": c.num_heads,
        "blocks": [b + 1 for b in blocks_of(settings.explore_blocks, c.depth)],
        "names": list(ms.samples.names),
        "images": images,
        "maps": [
            _blob(m, r, c.num_prefix_tokens, bits) for m, r in zip(a["explorer"], a["explorer_rollout"])
        ],
    }
