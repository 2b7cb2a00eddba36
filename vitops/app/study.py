"""A Study: every model's accumulators over one analysis run, and the state `--save-state` writes.

Every part of a Study merges exactly (float64 sums, rows keyed by image position), so shards
analysed apart and merged by `vitops report` give the numbers one run over all images gives.
The names here are the names in metrics.json and in the per-image files: distance, rollout,
cls_attention, cls_trajectory, token_mass, token_norms, logit_lens, cka, samples, probes (of the
weights), per_image.
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np

from .. import analysis
from ..analysis.accumulate import Accumulator, Fixed, Moments, save_states, settings_difference, state_array
from ..analysis.tokens import token_counts
from ..backend import name as backend_name
from ..errors import AnalysisError
from .per_image import PerImage, names_from_bytes, names_to_bytes
from .settings import RunSettings


class Samples(Accumulator):
    """What the report draws for a few chosen images of one model: the image as the model saw it
    (uint8, denormalised), its rollout, last-block CLS attention per head, CLS trajectory, top
    classes, the last block's patch-token norms, the patch tokens the PCA reads (N, D); when
    explained, the relevance of each patch for the top class, gradient x input, integrated
    gradients and their completeness error (NaN otherwise); with faithfulness, the deletion and
    insertion curves of each of FAITHFULNESS_MAPS (M, 2, FAITHFULNESS_STEPS + 1) (NaN otherwise);
    the attention explorer's maps of the explored blocks and the full rollout (float16,
    `vitops.app.explorer.collect`; shape (0,) when the run does not keep them). Keyed by
    position in the image list; merging takes the union."""

    kind = "samples"
    FIELDS = (
        "display",
        "rollout",
        "cls_attention",
        "cls_trajectory",
        "top",
        "prob",
        "token_norms",
        "pca_tokens",
        "relevance",
        "input_gradients",
        "integrated_gradients",
        "ig_error",
        "faithfulness",
        "explorer",
        "explorer_rollout",
    )

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
        return {"positions": self.positions, "names": names_to_bytes(self.names), **self.arrays}

    # the dtype kind of each field ("u" uint8 display, "i" classes, "f" maps and probabilities)
    KINDS = {"display": "u", "top": "i"}

    def set_state(self, arrays) -> None:
        positions = state_array(arrays, "positions", "iu", ndim=1).astype(np.int64)
        k = len(positions)
        if k and (positions.min() < 0 or len(np.unique(positions)) != k):
            raise AnalysisError("its sample positions are negative or repeat")
        fields = {}
        if k:  # each field: one row per sample image (their shapes the study checks)
            for f in self.FIELDS:
                a = state_array(arrays, f, self.KINDS.get(f, "f"))
                if a.ndim < 1 or a.shape[0] != k:
                    raise AnalysisError(f"its {f!r} array has {a.shape[:1]} rows for {k} sample images")
                fields[f] = a
        self.names = names_from_bytes(state_array(arrays, "names", "u", ndim=1), k)
        self.positions, self.arrays = positions, fields

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
        self.image_size = (int(size[0]), int(size[1]))  # (Y, X) of the images as the model saw them
        self.grid = grid = (size[0] // config.patch_size, size[1] // config.patch_size)
        depth, heads = config.depth, config.num_heads
        self.distance = analysis.AttentionDistance(config.patch_size, config.num_prefix_tokens, grid=grid)
        self.rollout = Moments((*grid,), what="rollout")
        self.cls_attention = Moments((heads, *grid), what="last-block CLS attention")
        self.cls_trajectory = Moments((depth + 1,), what="CLS cosine to final")
        # the share of attention each kind of token receives, per block: TOKEN_GROUPS
        self.token_mass = Moments((depth, len(analysis.TOKEN_GROUPS)), what="attention by token group")
        self.token_norms = analysis.NormHistogram(depth + 1, *token_counts(config))
        # per block: [top-1 agreement, final-class probability], or [cosine] without a head
        lens = (depth + 1, 2 if config.num_classes else 1)
        self.logit_lens = Moments(lens, what="logit lens")
        self.pca = analysis.Covariance(config.dim)  # of the patch tokens (`RunSettings.pca_step`)
        self.cka = analysis.MinibatchCKA()
        self.samples = Samples()
        self.per_image = PerImage(depth, heads, grid, bool(config.num_classes))
        self.probes = Fixed()  # of the weights: position similarity, patch filters

    # The accumulators by name: the names a state file stores them under.
    NAMES = (
        "distance",
        "rollout",
        "cls_attention",
        "cls_trajectory",
        "token_mass",
        "token_norms",
        "logit_lens",
        "pca",
        "cka",
        "samples",
        "per_image",
        "probes",
    )

    def accumulators(self) -> dict[str, Accumulator]:
        return {name: getattr(self, name) for name in self.NAMES}

    def probe_weights(self, model, max_filters: int = 64) -> None:
        """Position-embedding similarity (ViT, Fig. 7 centre) of the reference patches
        (`analysis.reference_patches`) to every patch, and the first patch filters."""
        params = model.variables_by_key
        if "pos_embed" in params:  # of the table's patch rows
            refs = analysis.reference_patches(self.config.grid_size)
            sim = keras.ops.convert_to_numpy(
                analysis.position_similarity(params["pos_embed"], self.config.num_pos_prefix, refs)
            )
        else:  # rotary positions (DINOv3): no table to compare
            sim = np.zeros((0, 0), np.float32)
        filters = analysis.projection_filters(params)[:max_filters]
        self.probes = Fixed(
            position_similarity=sim,
            projection_filters=keras.ops.convert_to_numpy(filters),
        )


class Study:
    """Every model's accumulators, the cross-model CKA of each pair, and what was analysed."""

    def __init__(
        self, models: list[ModelStudy], settings: RunSettings, n_images: int, shards: list | None = None
    ):
        self.models, self.settings, self.n_images = models, settings, n_images
        self.cross = {
            (a.label, b.label): analysis.MinibatchCKA() for i, a in enumerate(models) for b in models[i + 1 :]
        }
        self.skipped: list[dict] = []  # {"position", "image", "reason"}
        self.analysed = 0
        self.cka_batches_skipped = 0  # batches with fewer than 4 readable images
        self.shards = shards or []  # [[I, N], ...] this state covers
        self.seconds = 0.0
        self.backend = backend_name()

    # ---- merge, save, load ----
    def metadata(self) -> dict:
        return {
            "settings": self.settings.recorded(),
            "n_images": self.n_images,
            "models": [{"label": m.label, "info": m.info, "config": m.config.to_json()} for m in self.models],
            "skipped": self.skipped,
            "analysed": self.analysed,
            "shards": self.shards,
            "cka_batches_skipped": self.cka_batches_skipped,
            "seconds": self.seconds,
            "backend": self.backend,
        }

    def save(self, path) -> None:
        """Every accumulator and the study's metadata in one safetensors file (atomic)."""
        accs = {}
        for i, m in enumerate(self.models):
            for name, acc in m.accumulators().items():
                accs[f"m{i}.{name}"] = acc
        for i, acc in enumerate(self.cross.values()):
            accs[f"cross{i}"] = acc
        save_states(path, accs, {"study": self.metadata()})

    def merge(self, other: Study) -> Study:
        """Fold another shard's study into this one; refuses other models or settings."""
        differ = settings_difference(self.settings.recorded(), other.settings.recorded())
        if differ:
            raise AnalysisError(f"cannot merge studies with different settings: {differ}")
        if self.n_images != other.n_images:
            raise AnalysisError(
                f"cannot merge studies of different image lists: {self.n_images} images != {other.n_images}"
            )
        mine = [(m.label, m.info.get("fingerprint")) for m in self.models]
        theirs = [(m.label, m.info.get("fingerprint")) for m in other.models]
        if mine != theirs:
            raise AnalysisError(
                f"cannot merge studies of different models: {self._describe()} != {other._describe()}"
            )
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
        return ", ".join(
            f"{m.label} ({m.info.get('name') or 'model'}, weights {str(m.info.get('fingerprint'))[:12]})"
            for m in self.models
        )
