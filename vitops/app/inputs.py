"""Images in batches, decoded while the model computes: the input side of `vitops analyze`.

Batches are fixed by position in the image list, not by which images decode: an image that
fails leaves a smaller batch behind it, never shifts the next ones. So a run over the whole list
and runs over shards of it (`shard_batches`) see the same batches, and their statistics merge
into exactly the numbers one run gives.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import AnalysisError, VitopsError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MIN_CKA_BATCH = 4  # the unbiased HSIC estimator needs n >= 4


def expand_images(items) -> list:
    """Paths (files, or folders whose image files are taken in name order) and arrays: one
    image (H, W[, C]) each, or a stack (B, H, W, C) of them."""
    if isinstance(items, (str, os.PathLike, np.ndarray)):
        items = [items]
    out = []
    for item in items:
        if isinstance(item, np.ndarray) and item.ndim == 4:
            out.extend(item)
        elif isinstance(item, (str, os.PathLike)) and os.path.isdir(item):
            out.extend(sorted(str(p) for p in Path(item).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            out.append(item)
    return out


def image_names(items) -> list[str]:
    """A distinct display name per item: its file name, numbered where two share one."""
    names, seen = [], set()
    for i, item in enumerate(items):
        name = os.path.basename(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else f"array_{i}"
        if name in seen:
            name = f"{name} (#{i + 1})"
        seen.add(name)
        names.append(name)
    return names


def batches(n: int, size: int) -> list[range]:
    """Batches of image positions; a last batch under 4 images joins the one before, so every
    batch can feed the unbiased CKA estimator (when all its images decode)."""
    if size < 1:
        raise AnalysisError(f"batch size must be at least 1, got {size}")
    edges = list(range(0, n, size)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] < MIN_CKA_BATCH:
        edges.pop(-2)
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:])]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 0 <= I < N."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise AnalysisError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise AnalysisError(f"--shard {text}: need 0 <= I < N")
    return i, n


def shard_batches(all_batches: Sequence[range], shard: tuple[int, int] | None) -> list[range]:
    """The I-th of N contiguous runs of whole batches (the same batches a single run makes)."""
    if shard is None:
        return list(all_batches)
    i, n = shard
    k = len(all_batches)
    return list(all_batches[i * k // n:(i + 1) * k // n])


def sample_positions(n: int, k: int) -> list[int]:
    """k image positions spread evenly over n, always the same for the same n and k."""
    if k <= 0 or n <= 0:
        return []
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(k, n))})


def prefetch(jobs: Sequence, work: Callable, workers: int = 2, depth: int = 2) -> Iterator:
    """Yield work(job) for each job in order, computing up to `depth` ahead in `workers`
    threads, so decoding overlaps the model's compute (OpenCV releases the GIL). Memory holds at
    most depth + 1 results."""
    if workers <= 0:
        for job in jobs:
            yield work(job)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vitops-decode") as pool:
        pending = deque()
        it = iter(jobs)
        try:
            for job in it:
                pending.append(pool.submit(work, job))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


class DecodedBatch:
    """One batch after decoding: the positions that decoded, per-model inputs, and failures."""

    def __init__(self, positions, inputs, failed):
        self.positions = positions  # list[int], global positions of the images that decoded
        self.inputs = inputs  # list (per model) of (b, H, W, 3) float32 arrays, or None
        self.failed = failed  # list[(position, reason)]


def decoder(items, preparers: Sequence[Callable], read: Callable) -> Callable[[range], DecodedBatch]:
    """A function turning a batch of positions into a DecodedBatch: each image is decoded once
    (read(item) -> RGB array) and prepared once per model (preparers[m](rgb) -> (H, W, 3)).
    Whatever fails on one image (unreadable, undecodable, too large) names it and skips it; the
    batch goes on."""
    def work(batch: range) -> DecodedBatch:
        positions, per_model, failed = [], [[] for _ in preparers], []
        for pos in batch:
            item = items[pos]
            try:
                rgb = read(item)
                prepared = [prep(rgb) for prep in preparers]
            except VitopsError as e:
                failed.append((pos, str(e)))
                continue
            except Exception as e:  # noqa: BLE001 - any failure of one image skips that image only
                failed.append((pos, f"{type(e).__name__}: {e}"))
                continue
            positions.append(pos)
            for m, x in enumerate(prepared):
                per_model[m].append(x)
        inputs = [np.stack(xs) if xs else None for xs in per_model]
        return DecodedBatch(positions, inputs, failed)

    return work
