"""Analyse models over a data set: every analysis of `vitops analyze`, streamed batch by batch.

    study = run_study(["digits_vit", "digits_deit"], images)   # computing
    vitops.report.write_report(study, "out/")                  # drawing and writing

Each batch of images is decoded once (in worker threads, while the models compute) and
prepared per model (its own resolution and preprocessing). Each model's compiled forward pass
computes the reductions block by block (`vitops.reductions`), and only small arrays reach the
accumulators here. Memory does not grow with the number of images: what is kept per image goes
to the per-image files as the run goes (`vitops.perimage`), and what the figures show comes from
the accumulators (sums over all images) and a few sample images.

A Study is also the state that `--save-state` writes and `vitops report` merges: every part of it
merges exactly (float64 sums), so shards analysed apart give one run's numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass

import keras
import numpy as np

from . import _backend, analysis, stream
from .analysis.accumulate import Accumulator, Fixed, Moments, load_states, save_states, settings_difference
from .analysis.gradients import relevance_for_report
from .analysis.rollout import HEAD_FUSIONS
from .errors import AnalysisError
from .imagefile import read_image
from .perimage import TOP_K, PerImage, PerImageWriter
from .preprocess import Preprocessing, denormalize, prepare
from .reductions import Reductions
from .weights import read_labels

DEFAULT_SHOW = 8


@dataclass(frozen=True)
class StudySettings:
    """What every model is asked for; all models of a study share these."""

    batch_size: int = 8
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    threshold: float | None = None  # DINO mass masks of the last block's CLS attention
    show: int = DEFAULT_SHOW  # sample images drawn in the report
    explain: bool = False  # class-specific relevance (Chefer et al. 2021) of the sample images

    def __post_init__(self):
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise AnalysisError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.head_fusion not in HEAD_FUSIONS:
            raise AnalysisError(f"head fusion must be one of {HEAD_FUSIONS}, got {self.head_fusion!r}")
        if not 0.0 <= self.discard_ratio < 1.0:
            raise AnalysisError(f"discard ratio must be in [0, 1), got {self.discard_ratio}")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise AnalysisError(f"threshold must be in (0, 1], got {self.threshold}")
        if not isinstance(self.show, int) or self.show < 0:
            raise AnalysisError(f"--show must be a non-negative integer, got {self.show!r}")
        if not isinstance(self.explain, bool):
            raise AnalysisError(f"explain must be True or False, got {self.explain!r}")

    def reductions(self) -> Reductions:
        return Reductions(distance=True, rollout="cls", head_fusion=self.head_fusion,
                          discard_ratio=self.discard_ratio, cls_attention=True, cls_tokens=True,
                          grams=True)


class Samples(Accumulator):
    """What the report draws for a few chosen images of one model: the image as the model saw it
    (uint8, denormalised), its rollout, last-block CLS attention per head, CLS trajectory, top
    classes and, when explained, the relevance of each patch for the top class (NaN otherwise).
    Keyed by position in the image list; merging takes the union."""

    kind = "samples"
    FIELDS = ("display", "rollout", "heat", "cls_cos", "top", "prob", "relevance")

    def __init__(self):
        self.positions = np.zeros((0,), np.int64)
        self.names: list[str] = []
        self.arrays: dict[str, np.ndarray] = {}

    @property
    def empty(self) -> bool:
        return len(self.positions) == 0

    def add(self, position: int, name: str, **fields) -> None:
        self.positions = np.append(self.positions, np.int64(position))
        self.names.append(name)
        for k in self.FIELDS:
            v = np.asarray(fields[k])[None]
            self.arrays[k] = v if k not in self.arrays else np.concatenate([self.arrays[k], v])

    def state(self) -> dict:
        from .perimage import _names_to_bytes

        return {"positions": self.positions, "names": _names_to_bytes(self.names), **self.arrays}

    def set_state(self, arrays) -> None:
        from .perimage import _bytes_to_names

        self.positions = np.asarray(arrays["positions"], np.int64)
        self.names = _bytes_to_names(arrays["names"], len(self.positions))
        self.arrays = {k: np.asarray(arrays[k]) for k in self.FIELDS if k in arrays}

    def _merge_state(self, other) -> None:
        if np.intersect1d(self.positions, other.positions).size:
            raise AnalysisError("the states hold the same sample image twice: overlapping shards?")
        positions = np.concatenate([self.positions, other.positions])
        order = np.argsort(positions, kind="stable")
        names = self.names + other.names
        self.positions, self.names = positions[order], [names[i] for i in order]
        self.arrays = {k: np.concatenate([self.arrays[k], other.arrays[k]])[order] for k in self.FIELDS}


def model_fingerprint(model) -> str:
    """sha256 over the architecture and every weight: what makes two states' models the same."""
    h = hashlib.sha256(model.config.to_json().encode())
    for key, value in sorted(model.get_params().items()):
        h.update(key.encode())
        h.update(np.ascontiguousarray(value, np.float32).tobytes())
    return h.hexdigest()


class ModelStudy:
    """The accumulators of one model."""

    def __init__(self, label: str, info: dict, config):
        self.label, self.info, self.config = label, info, config
        # the patch grid of the images analysed: the preprocessing's size, which may differ from
        # the model's native one (position embeddings are resampled)
        size = (info.get("preprocessing") or {}).get("size") or config.image_size
        self.grid = grid = (size[0] // config.patch_size, size[1] // config.patch_size)
        depth, heads = config.depth, config.num_heads
        self.distance = analysis.AttentionDistance(config.patch_size, config.num_prefix_tokens, grid=grid)
        self.rollout = Moments((*grid,), what="rollout")
        self.heat = Moments((heads, *grid), what="last-block CLS attention")
        self.cls_cos = Moments((depth + 1,), what="CLS cosine to final")
        self.cka = analysis.MinibatchCKA()
        self.samples = Samples()
        self.per_image = PerImage(depth, heads, grid, bool(config.num_classes))
        self.weights = Fixed()  # probes of the weights: position similarity, patch filters

    def accumulators(self) -> dict[str, Accumulator]:
        return {"distance": self.distance, "rollout": self.rollout, "heat": self.heat,
                "cls_cos": self.cls_cos, "cka": self.cka, "samples": self.samples,
                "per_image": self.per_image, "weights": self.weights}

    def probe_weights(self, model, max_filters: int = 64) -> None:
        """Position-embedding similarity (ViT, Fig. 7 centre) and the first patch filters."""
        params = model.variables_by_key
        sim = analysis.position_similarity(params["pos_embed"], self.config.num_prefix_tokens)
        filters = analysis.projection_filters(params)[:max_filters]
        self.weights = Fixed(position_similarity=keras.ops.convert_to_numpy(sim),
                             projection_filters=keras.ops.convert_to_numpy(filters))


class Study:
    """Every model's accumulators, the cross-model CKA of each pair, and what was analysed."""

    def __init__(self, models: list[ModelStudy], settings: StudySettings, n_images: int,
                 shards: list | None = None):
        self.models, self.settings, self.n_images = models, settings, n_images
        self.cross = {(a.label, b.label): analysis.MinibatchCKA()
                      for i, a in enumerate(models) for b in models[i + 1:]}
        self.skipped: list[dict] = []  # {"position", "image", "reason"}
        self.analysed = 0
        self.cka_batches_skipped = 0  # batches with fewer than 4 readable images
        self.shards = shards or []  # [[I, N], ...] this state covers
        self.seconds = 0.0
        self.backend = _backend.name()

    # ---- merge, save, load ----
    def metadata(self) -> dict:
        return {"settings": asdict(self.settings), "n_images": self.n_images,
                "models": [{"label": m.label, "info": m.info, "config": m.config.to_json()} for m in self.models],
                "skipped": self.skipped, "analysed": self.analysed, "shards": self.shards,
                "cka_batches_skipped": self.cka_batches_skipped, "seconds": self.seconds,
                "backend": self.backend}

    def save(self, path) -> None:
        """Every accumulator and the study's metadata in one safetensors file (atomic)."""
        accs = {}
        for i, m in enumerate(self.models):
            for name, acc in m.accumulators().items():
                accs[f"m{i}.{name}"] = acc
        for i, acc in enumerate(self.cross.values()):
            accs[f"cross{i}"] = acc
        save_states(path, accs, {"study": self.metadata()})

    @classmethod
    def load(cls, path) -> "Study":
        from .config import ViTConfig

        accs, meta = load_states(path)
        try:
            m = meta["study"]
            settings = StudySettings(**m["settings"])
            models = [ModelStudy(e["label"], e["info"], ViTConfig.from_json(e["config"])) for e in m["models"]]
        except (KeyError, TypeError, ValueError) as e:
            raise AnalysisError(f"{path}: not a study state (written by `vitops analyze --save-state`): {e}") from None
        study = cls(models, settings, int(m["n_images"]), m.get("shards"))
        for i, ms in enumerate(models):
            for name in ms.accumulators():
                acc = accs.get(f"m{i}.{name}")
                if acc is None:
                    raise AnalysisError(f"{path}: the state lacks {ms.label}'s {name}")
                setattr(ms, name, acc)
        for i, key in enumerate(study.cross):
            study.cross[key] = accs[f"cross{i}"]
        study.skipped, study.analysed = m["skipped"], int(m["analysed"])
        study.cka_batches_skipped, study.seconds = int(m["cka_batches_skipped"]), float(m["seconds"])
        study.backend = m.get("backend", study.backend)
        return study

    def merge(self, other: "Study") -> "Study":
        """Fold another shard's study into this one; refuses other models or settings."""
        differ = settings_difference(asdict(self.settings), asdict(other.settings))
        if differ:
            raise AnalysisError(f"cannot merge studies with different settings: {differ}")
        if self.n_images != other.n_images:
            raise AnalysisError(f"cannot merge studies of different image lists: {self.n_images} "
                                f"images != {other.n_images}")
        mine = [(m.label, m.info.get("fingerprint")) for m in self.models]
        theirs = [(m.label, m.info.get("fingerprint")) for m in other.models]
        if mine != theirs:
            raise AnalysisError(f"cannot merge studies of different models: {self._describe()} != "
                                f"{other._describe()}")
        for a, b in zip(self.models, other.models):
            for name, acc in a.accumulators().items():
                acc.merge(b.accumulators()[name])
        for key, acc in self.cross.items():
            acc.merge(other.cross[key])
        self.skipped = sorted(self.skipped + other.skipped, key=lambda s: s["position"])
        self.analysed += other.analysed
        self.cka_batches_skipped += other.cka_batches_skipped
        self.shards = self.shards + other.shards
        self.seconds += other.seconds
        return self

    def _describe(self) -> str:
        return ", ".join(f"{m.label} ({m.info.get('name') or 'model'}, weights "
                         f"{str(m.info.get('fingerprint'))[:12]})" for m in self.models)


def load_studies(paths) -> Study:
    """Load state files and merge them into one study."""
    paths = list(paths)
    if not paths:
        raise AnalysisError("no state files given")
    study = Study.load(paths[0])
    for p in paths[1:]:
        study.merge(Study.load(p))
    return study


# ---- running ----

def _read(item):
    """A file decoded (header checked first, see `imagefile.read_image`); an array as it is."""
    return read_image(item) if isinstance(item, (str, os.PathLike)) else item


class Preparer:
    """One model's preprocessing, from its weight file's record, the family defaults and the
    caller's overrides (`Preprocessing.for_model`)."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing

    @classmethod
    def for_model(cls, model, overrides=None) -> "Preparer":
        overrides = dict(overrides or {})
        family = overrides.pop("family", None)
        meta = getattr(model, "metadata", {}) or {}
        return cls(Preprocessing.for_model(model.config, meta, family=family, **overrides))

    def prepare(self, rgb):
        return prepare(rgb, self.preprocessing)

    def display(self, x):
        """A model input (H, W, 3) back to uint8 RGB, for the figures."""
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
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "model"
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


def run_study(models, images, *, settings: StudySettings | None = None, per_image_dir=None,
              keep_per_image: bool = False, shard: tuple[int, int] | None = None, devices=None,
              preprocessing=None, progress: bool = True, workers: int = 2) -> Study:
    """Analyse every model over the images, streaming. Returns the Study.

    models: loaded models, files, shipped or registry names (one or a list). images: files,
    folders, arrays. per_image_dir: where the per-image files go (None: not written);
    keep_per_image: also read them back into the study (what a state file for shards needs).
    shard: (I, N) analyses the I-th of N contiguous runs of batches. devices: data-parallel
    devices (JAX): None or 1 for one, "all" or N. preprocessing: per-model overrides (a dict, or
    one per model) of the preprocessing recorded in the weight file.
    """
    from .loading import resolve_model

    settings = settings or StudySettings()
    start = time.perf_counter()
    specs = list(models) if isinstance(models, (list, tuple)) else [models]
    if not specs:
        raise AnalysisError("no model given")
    distribution = _backend.data_parallel(devices)
    loaded = [resolve_model(s) for s in specs]  # errors here, before any work
    if distribution is not None:
        for m in loaded:
            _backend.distribute_model(m, distribution)
    labels = _unique_labels(specs, loaded)
    overrides = preprocessing if isinstance(preprocessing, (list, tuple)) else [preprocessing] * len(loaded)
    preparers = [Preparer.for_model(m, o) for m, o in zip(loaded, overrides)]

    items = stream.expand_images(images)
    if not items:
        raise AnalysisError("no images to analyse")
    n = len(items)
    names = stream.image_names(items)
    batches = stream.shard_batches(stream.batches(n, settings.batch_size), shard)
    samples = set(stream.sample_positions(n, settings.show))

    studies = []
    for label, model, prep in zip(labels, loaded, preparers):
        info = {"name": model.config.name, "family": model.config.family,
                "fingerprint": model_fingerprint(model), "labels": read_labels(getattr(model, "metadata", {}) or {}),
                "source_sha256": (getattr(model, "metadata", {}) or {}).get("source_sha256"),
                "preprocessing": prep.describe()}
        studies.append(ModelStudy(label, info, model.config))
        studies[-1].probe_weights(model)
    study = Study(studies, settings, n, [list(shard)] if shard else [[0, 1]])
    writers = []
    if per_image_dir is not None:
        writers = [PerImageWriter(per_image_dir, ms.label, n, ms.config.depth, ms.config.num_heads,
                                  ms.grid, ms.info["labels"], bool(ms.config.num_classes))
                   for ms in studies]
    spec = settings.reductions()
    total = sum(len(b) for b in batches)
    bar = keras.utils.Progbar(total, unit_name="image", verbose=1 if progress else 0,
                              stateful_metrics=["images/s"])
    done, t0 = 0, time.perf_counter()
    decode = stream.decoder(items, [p.prepare for p in preparers], _read)
    try:
        for batch in stream.prefetch(batches, decode, workers=workers):
            for pos, reason in batch.failed:
                study.skipped.append({"position": pos, "image": names[pos], "reason": reason})
            if batch.positions:
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
    study.seconds = time.perf_counter() - start
    return study


def _analyse_batch(study, models, preparers, writers, batch, names, samples, spec, distribution):
    grams = []
    batch_names = [names[p] for p in batch.positions]
    b = len(batch.positions)
    for m, (ms, model, prep) in enumerate(zip(study.models, models, preparers)):
        x = batch.inputs[m]
        if distribution is not None:
            with distribution.scope():  # traced with the mesh in view (see _backend.whole_batch)
                out = model.infer(_backend.distribute_batch(x, distribution), reductions=spec)
        else:
            out = model.infer(x, reductions=spec)
        red = {k: keras.ops.convert_to_numpy(v) for k, v in out["reductions"].items()}
        rows, cols = ms.grid
        distance = red["distance"]  # (b, L, H)
        rollout = red["rollout"].reshape(b, rows, cols)
        heat = red["cls_attention"].reshape(b, -1, rows, cols)
        tokens = red["cls_tokens"].astype(np.float64)  # (b, L+1, D)
        unit = tokens / np.maximum(np.linalg.norm(tokens, axis=-1, keepdims=True), 1e-30)
        cos = (unit * unit[:, -1:]).sum(-1)  # (b, L+1)
        cos[:, -1] = 1.0  # the final state with itself, exactly (not 1 +- rounding noise)
        ms.distance.update_distances(distance)
        ms.rollout.update_values(rollout)
        ms.heat.update_values(heat)
        ms.cls_cos.update_values(cos)
        top = prob = None
        if "logits" in out:
            logits = keras.ops.convert_to_numpy(out["logits"]).astype(np.float64)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            top, prob = _top(p / p.sum(-1, keepdims=True))
        if writers:
            writers[m].write(batch.positions, batch_names, distance, rollout, top, prob)
        shown = [j for j, pos in enumerate(batch.positions) if pos in samples]
        relevance = np.full((len(shown), rows, cols), np.nan, np.float32)
        if shown and study.settings.explain and ms.config.num_classes:
            # a backward pass per sample image only: the class-specific maps are for the report
            relevance = relevance_for_report(model, np.asarray(x)[shown])[0]
        for j, r in zip(shown, relevance):
            pos = batch.positions[j]
            ms.samples.add(pos, names[pos], display=prep.display(x=batch.inputs[m][j]),
                           rollout=rollout[j], heat=heat[j], cls_cos=cos[j],
                           top=top[j] if top is not None else np.full(TOP_K, -1, np.int32),
                           prob=prob[j] if prob is not None else np.full(TOP_K, np.nan, np.float32),
                           relevance=r)
        grams.append(red["grams"])
    if b >= stream.MIN_CKA_BATCH:
        for ms, g in zip(study.models, grams):
            ms.cka.update_grams(g)
        for i, a in enumerate(study.models):
            for j in range(i + 1, len(study.models)):
                study.cross[(a.label, study.models[j].label)].update_grams(grams[i], grams[j])
    else:
        study.cka_batches_skipped += 1
    study.analysed += b
