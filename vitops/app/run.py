"""Running an analysis: every model over a data set, streamed batch by batch.

    study = run_study(["digits_vit", "digits_deit"], images)   # a Study (vitops.app.study)

Each batch of images is decoded once (in worker threads, while the models compute) and
prepared per model (its own resolution and preprocessing). Each model's compiled forward pass
computes the reductions block by block (`vitops.analysis.reductions`), and only small arrays
reach the accumulators here. Memory does not grow with the number of images: what is kept per
image goes to the per-image files as the run goes (`vitops.app.per_image`), and what the figures
show comes from the accumulators (sums over all images) and a few sample images.
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np

from ..analysis.norms import lens_scores
from ..backend import distribute, heap
from ..errors import AnalysisError
from ..io.image_file import read_image
from ..io.names import safe_name
from ..io.weight_file import read_labels
from ..preprocess import Preprocessing, denormalize, prepare
from . import explorer, inputs
from .explain import explain
from .per_image import TOP_K, PerImageWriter
from .settings import RunSettings
from .study import ModelStudy, Study, model_fingerprint


def _read(item):
    """A file decoded (header checked first, see `vitops.io.image_file`); an array as it is."""
    return read_image(item) if isinstance(item, (str, os.PathLike)) else item


class Preparer:
    """One model's preprocessing, from its weight file's record, the family defaults and the
    caller's overrides (`Preprocessing.for_model`)."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing

    @classmethod
    def for_model(cls, model, overrides=None) -> Preparer:
        overrides = dict(overrides or {})
        family = overrides.pop("family", None)
        meta = model.metadata
        return cls(Preprocessing.for_model(model.config, meta, family=family, **overrides))

    def prepare(self, rgb):
        return prepare(rgb, self.preprocessing)

    def display(self, x):
        """A model input (Y, X, 3) back to uint8 RGB, for the figures."""
        return (np.nan_to_num(denormalize(x, self.preprocessing)) * 255 + 0.5).astype(np.uint8)

    def describe(self) -> dict:
        return json.loads(self.preprocessing.to_json())


def _unique_labels(specs, models) -> list[str]:
    labels = []
    for spec, model in zip(specs, models):
        if isinstance(spec, (str, os.PathLike)):
            base = os.path.basename(os.fspath(spec)).removesuffix(".safetensors")
        else:
            base = model.config.name or "model"
        base = safe_name(base, fallback="model")
        label, k = base, 2
        while label in labels:
            label, k = f"{base}-{k}", k + 1
        labels.append(label)
    return labels


def _top(probs: np.ndarray):
    k = min(TOP_K, probs.shape[-1])
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    top = np.full((len(probs), TOP_K), -1, np.int32)
    prob = np.full((len(probs), TOP_K), np.nan, np.float32)
    top[:, :k] = idx
    prob[:, :k] = np.take_along_axis(probs, idx, axis=-1)
    return top, prob


def run_study(
    models,
    images,
    *,
    settings: RunSettings | None = None,
    per_image_dir=None,
    keep_per_image: bool = False,
    shard: tuple[int, int] | None = None,
    devices=None,
    preprocessing=None,
    progress: bool = True,
) -> Study:
    """Analyse every model over the images, streaming. Returns the Study.

    models: loaded models, files, shipped or registry names (one or a list). images: files,
    folders, arrays. per_image_dir: where the per-image files go (None: not written);
    keep_per_image: also read them back into the study (what a state file for shards needs).
    shard: (I, N) analyses the I-th of N contiguous runs of batches. devices: data-parallel
    devices (JAX): None or 1 for one, "all" or N. preprocessing: per-model overrides (a dict, or
    one per model) of the preprocessing recorded in the weight file.
    """
    from ..hub.load import resolve_model

    settings = settings or RunSettings()
    start = time.perf_counter()
    specs = list(models) if isinstance(models, (list, tuple)) else [models]
    if not specs:
        raise AnalysisError("no model given")
    distribution = distribute.data_parallel(devices)
    loaded = [resolve_model(s) for s in specs]  # errors here, before any work
    for m in loaded:
        if settings.pca_step > m.config.depth:
            raise AnalysisError(
                f"pca step {settings.pca_step} is past the last block of {m.config.name or 'a model'} "
                f"({m.config.depth} blocks)"
            )
        explorer.blocks_of(settings.explore_blocks, m.config.depth, m.config.name or "a model")
    if distribution is not None:
        for m in loaded:
            distribute.distribute_model(m, distribution)
    labels = _unique_labels(specs, loaded)
    overrides = preprocessing if isinstance(preprocessing, (list, tuple)) else [preprocessing] * len(loaded)
    preparers = [Preparer.for_model(m, o) for m, o in zip(loaded, overrides)]

    items = inputs.expand_images(images)
    if not items:
        raise AnalysisError("no images to analyse")
    n = len(items)
    names = inputs.image_names(items)
    batches = inputs.batches(n, settings.batch_size, shard)
    samples = set(inputs.sample_positions(n, settings.show))

    studies = []
    for label, model, prep in zip(labels, loaded, preparers):
        info = {
            "name": model.config.name,
            "family": model.config.family,
            "fingerprint": model_fingerprint(model),
            "labels": read_labels(model.metadata),
            "source_sha256": model.metadata.get("source_sha256"),
            "preprocessing": prep.describe(),
        }
        studies.append(ModelStudy(label, info, model.config))
        studies[-1].probe_weights(model)
    study = Study(studies, settings, n, [list(shard)] if shard else [[0, 1]])
    writers = []
    if per_image_dir is not None:
        writers = [
            PerImageWriter(
                per_image_dir,
                ms.label,
                n,
                ms.config.depth,
                ms.config.num_heads,
                ms.grid,
                ms.info["labels"],
                bool(ms.config.num_classes),
            )
            for ms in studies
        ]
    spec = settings.reductions()
    total = sum(len(b) for b in batches)
    bar = keras.utils.Progbar(
        total, unit_name="image", verbose=1 if progress else 0, stateful_metrics=["images/s"]
    )
    # Where a block's maps exceed the analyses' budget (high resolutions), what the last batch's
    # host side freed (copies, accumulator updates, the decoding threads' arenas) is handed back
    # before each pass: at 1024 px (ViT-S/16, batch 2) the peak was 24 and 71 MB lower on jax,
    # 34 and 47 MB on torch (two runs each). Not below: at 224 px (ViT-B/16, batch 8) it cost 3
    # and 4 % of torch's images/s (jax: 1 and 3 %).
    large = any(
        4
        * settings.batch_size
        * ms.config.num_heads
        * (ms.config.num_prefix_tokens + ms.grid[0] * ms.grid[1]) ** 2
        > spec.memory
        for ms in studies
    )
    done, t0 = 0, time.perf_counter()
    decode = inputs.decoder(items, [p.prepare for p in preparers], _read)
    try:
        for batch in inputs.prefetch(batches, decode, workers=settings.workers):
            for pos, reason in batch.failed:
                study.skipped.append({"position": pos, "image": names[pos], "reason": reason})
            if batch.positions:
                if large:
                    heap.trim()
                _analyse_batch(study, loaded, preparers, writers, batch, names, samples, spec, distribution)
            done += len(batch.positions) + len(batch.failed)
            bar.update(done, values=[("images/s", done / max(time.perf_counter() - t0, 1e-9))])
    finally:
        for w in writers:
            w.flush()
    if study.analysed == 0 and total:
        reasons = "; ".join(s["reason"] for s in study.skipped[:5])
        raise AnalysisError(f"none of the {total} images could be read: {reasons}")
    if writers and keep_per_image:
        failed = {s["position"] for s in study.skipped}
        analysed = [p for b in batches for p in b if p not in failed]
        for ms, w in zip(studies, writers):
            ms.per_image = w.collect(analysed, [names[p] for p in analysed])
    # What the passes freed, handed back before the report is drawn: on eager PyTorch at 1024
    # px (ViT-S/16, batch 2) 530 MB of free heap, which the report's figures and JSON would
    # otherwise have stacked on (`vitops.backend.heap`).
    heap.trim()
    study.seconds = time.perf_counter() - start
    return study


def _analyse_batch(study, models, preparers, writers, batch, names, samples, spec, distribution):
    grams = []
    batch_names = [names[p] for p in batch.positions]
    b = len(batch.positions)
    for m, (ms, model, prep) in enumerate(zip(study.models, models, preparers)):
        x = batch.inputs[m]
        if distribution is not None:
            with (
                distribution.scope()
            ):  # traced with the mesh in view (see vitops.backend.distribute.whole_batch)
                out = model.infer(distribute.distribute_batch(x, distribution), reductions=spec)
        else:
            out = model.infer(x, reductions=spec)
        red = {k: distribute.to_host(v) for k, v in out["reductions"].items()}
        rows, cols = ms.grid
        distance = red["distance"]  # (b, L, H)
        rollout = red["rollout"].reshape(b, rows, cols)
        cls_attention = red["cls_attention"].reshape(b, -1, rows, cols)  # (b, H, I, J)
        trajectory = red["cls_trajectory"]  # (b, L + 1)
        ms.distance.update_distances(distance)
        ms.rollout.update_values(rollout)
        ms.cls_attention.update_values(cls_attention)
        ms.cls_trajectory.update_values(trajectory)
        ms.token_mass.update_values(red["token_mass"])
        norms = red["token_norms"]  # (b, L + 1, T)
        ms.token_norms.update(norms)
        prefix = ms.config.num_prefix_tokens
        lens = lens_scores(red["logit_lens"], bool(ms.config.num_classes))  # (b, L + 1, 2 or 1)
        ms.logit_lens.update_values(lens)
        ms.pca.update_scatter(b * rows * cols, red["pca_mean"], red["pca_scatter"])
        top = prob = None
        if "logits" in out:
            logits = distribute.to_host(out["logits"]).astype(np.float64)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            top, prob = _top(p / p.sum(-1, keepdims=True))
        if writers:
            writers[m].write(
                batch.positions,
                batch_names,
                distance,
                rollout,
                top,
                prob,
                lens[..., -1],  # the final class's probability, or the cosine
                norms[:, :, prefix:].max(axis=-1),
            )
        shown = [j for j, pos in enumerate(batch.positions) if pos in samples]
        # backward passes for the sample images only: the class-specific maps are for the report
        explained = explain(
            model,
            np.asarray(x)[shown],
            [batch.positions[j] for j in shown],
            (rows, cols),
            explain=study.settings.explain,
            faithfulness=study.settings.faithfulness,
            rollout=rollout[shown],
            cls_attention=cls_attention[shown].mean(axis=1),
        )
        if shown and explorer.keeps_maps(ms.config, ms.grid, study.settings):
            maps, rollouts = explorer.collect(model, np.asarray(x)[shown], study.settings)
        else:
            maps = rollouts = np.zeros((len(shown), 0), np.float16)
        for k, j in enumerate(shown):
            pos = batch.positions[j]
            ms.samples.add(
                pos,
                names[pos],
                display=prep.display(x=batch.inputs[m][j]),
                rollout=rollout[j],
                cls_attention=cls_attention[j],
                cls_trajectory=trajectory[j],
                top=top[j] if top is not None else np.full(TOP_K, -1, np.int32),
                prob=prob[j] if prob is not None else np.full(TOP_K, np.nan, np.float32),
                token_norms=norms[j, -1, prefix:].reshape(rows, cols),
                pca_tokens=red["pca_tokens"][j],
                explorer=maps[k],
                explorer_rollout=rollouts[k],
                **{name: v[k] for name, v in explained.items()},
            )
        grams.append(red["grams"])
    if b >= inputs.MIN_CKA_BATCH:
        for ms, g in zip(study.models, grams):
            ms.cka.update_grams(g)
        for i, a in enumerate(study.models):
            for j in range(i + 1, len(study.models)):
                study.cross[(a.label, study.models[j].label)].update_grams(grams[i], grams[j])
    else:
        study.cka_batches_skipped += 1
    study.analysed += b
