"""Images in batches, decoded while the model computes: the input side of `vitops analyze`.

Batches are fixed by position in the image list, not by which images decode: an image that
fails leaves a smaller batch behind it, never shifts the next ones. So a run over the whole list
and runs over shards of it (`batches(n, size, shard)`) see the same batches, and their statistics merge
into exactly the numbers one run gives.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import AnalysisError, VitopsError, clip_text
from ..io.names import display_name
from ..io.signals import reraise_signal

# What a folder's images are. OpenCV decodes GIF from 5.0 on; an older OpenCV names the file as
# undecodable, and it is listed as skipped (not silently left out).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
MIN_CKA_BATCH = 4  # the unbiased HSIC estimator needs n >= 4
MAX_REASON_CHARS = 2000  # why an image was skipped, as metrics.json and the report say it


def expand_images(items) -> list:
    """Paths (files, or folders whose entries with an image extension are taken in name order)
    and arrays: one image (Y, X[, C]) each, or a stack (B, Y, X, C) of them. An entry that is not
    a regular file (a FIFO, a device) is listed, and skipped with its reason when read."""
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
        if isinstance(item, (str, os.PathLike)):
            name = display_name(os.path.basename(os.fsdecode(item)))
        else:
            name = f"array_{i}"
        if name in seen:
            name = f"{name} (#{i + 1})"
        seen.add(name)
        names.append(name)
    return names


def batch_count(n: int, size: int) -> int:
    """How many batches `batches` makes of n images: ceil(n / size)."""
    if size < 1:
        raise AnalysisError(f"batch size must be at least 1, got {size}")
    return -(-n // size)


def _edge(j: int, n: int, size: int, k: int) -> int:
    """Where batch j starts (j = k: the end of the list). No batch holds more than size images
    (the batch size bounds a pass's memory); when the last would hold under MIN_CKA_BATCH and
    the last two can both hold that many, they share their images evenly, so that every batch
    feeds the unbiased CKA estimator."""
    if j >= k:
        return n
    if j == k - 1 and k >= 2:
        pair = n - (k - 2) * size  # the images of the last two batches
        if pair - size < MIN_CKA_BATCH <= pair // 2:
            return (k - 2) * size + (pair + 1) // 2
    return j * size


def batches(n: int, size: int, shard: tuple[int, int] | None = None) -> list[range]:
    """Batches of image positions, at most size each; a last batch under 4 images shares the
    images of the one before when both can hold 4, so every batch can feed the unbiased CKA
    estimator (when all its images decode; batches under 4 are counted as skipped for CKA).
    With shard (I, N):
    only the I-th of N contiguous runs of these batches, so shards see exactly the batches a
    single run makes. Computed, not listed: O(batches of the shard) whatever n is."""
    k = batch_count(n, size)
    first, last = (0, k) if shard is None else (shard[0] * k // shard[1], (shard[0] + 1) * k // shard[1])
    return [range(_edge(j, n, size, k), _edge(j + 1, n, size, k)) for j in range(first, last)]


def shard_span(n: int, size: int, shard: tuple[int, int]) -> range:
    """The image positions shard (I, N) covers in a list of n images at this batch size."""
    k = batch_count(n, size)
    i, count = shard
    return range(_edge(i * k // count, n, size, k), _edge((i + 1) * k // count, n, size, k))


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), 0 <= I < N."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise AnalysisError(f"--shard must be I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise AnalysisError(f"--shard {text}: need 0 <= I < N")
    return i, n


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
        self.inputs = inputs  # list (per model) of (b, Y, X, 3) float32 arrays, or None
        self.failed = failed  # list[(position, reason)]


def decoder(items, preparers: Sequence[Callable], read: Callable) -> Callable[[range], DecodedBatch]:
    """A function turning a batch of positions into a DecodedBatch: each image is decoded once
    (read(item) -> RGB array) and prepared once per model (preparers[m](rgb) -> (Y, X, 3)).
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
                reraise_signal(e)  # a signal inside a decoder ends the run, not the image
                failed.append((pos, display_name(clip_text(str(e), MAX_REASON_CHARS))))
                continue
            except Exception as e:  # noqa: BLE001 - any failure of one image skips that image only
                reraise_signal(e)
                failed.append((pos, display_name(clip_text(f"{type(e).__name__}: {e}", MAX_REASON_CHARS))))
                continue
            positions.append(pos)
            for m, x in enumerate(prepared):
                per_model[m].append(x)
        inputs = [np.stack(xs) if xs else None for xs in per_model]
        return DecodedBatch(positions, inputs, failed)

    return work
