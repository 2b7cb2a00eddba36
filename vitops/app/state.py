"""Reading analysis state files back (`vitops report`), as the hostile input they may be.

    study = load_studies(["s0.safetensors", "s1.safetensors"])   # merged, every part checked

A state file is written by `vitops analyze --save-state`, but what `vitops report` reads may
have been edited by anyone. Every field of its metadata is checked for its JSON type and range
(`vitops.io.schema`), every array for its dtype and its shape against the model's config and
grid, and every count and position against the arrays actually present, before anything is
allocated from them or written; a model label that would not be a plain file name is refused.
Every problem is an AnalysisError naming the file and the field.
"""

from __future__ import annotations

import json

import numpy as np

from ..analysis.accumulate import load_states
from ..analysis.cka import MinibatchCKA
from ..analysis.embeddings import reference_patches
from ..analysis.tokens import TOKEN_GROUPS, token_counts
from ..core.config import FAMILIES, ViTConfig
from ..errors import AnalysisError, ConfigError, VitopsError, clip
from ..io import schema
from ..io.names import safe_name
from ..io.weight_file import MAX_LABEL_CHARS
from ..preprocess import Preprocessing
from . import explorer
from .explain import FAITHFULNESS_MAPS, FAITHFULNESS_STEPS
from .inputs import MAX_REASON_CHARS, shard_span
from .per_image import MAX_NAME_CHARS, TOP_K
from .settings import RunSettings
from .study import ModelStudy, Study

MAX_IMAGES = 10**9  # an image list longer than this is not one vitops analysed
MAX_MODELS = 64
MAX_SHARDS = 1 << 20
BACKENDS = ("jax", "torch", "tensorflow")


def _info(value, where: str, config: ViTConfig) -> dict:
    e = AnalysisError
    info = schema.mapping(
        value, where, e, ("preprocessing",), ("name", "family", "fingerprint", "labels", "source_sha256")
    )
    schema.text(info.get("name"), f"{where}.name", e, 200, optional=True)
    if info.get("family") is not None and info["family"] not in FAMILIES:
        raise e(f"{where}.family must be one of {', '.join(FAMILIES)}, got {clip(info['family'])}")
    schema.text(info.get("fingerprint"), f"{where}.fingerprint", e, 64, optional=True)
    schema.text(info.get("source_sha256"), f"{where}.source_sha256", e, 64, optional=True)
    if info.get("labels") is not None:
        labels = schema.texts(info["labels"], f"{where}.labels", e, 100_000, MAX_LABEL_CHARS)
        if len(labels) != config.num_classes:
            raise e(f"{where}.labels: {len(labels)} class names for {config.num_classes} classes")
    try:
        pre = Preprocessing.from_mapping(
            schema.mapping(info["preprocessing"], f"{where}.preprocessing", e),
            source=f"{where}.preprocessing",
        )
    except ConfigError as err:
        raise e(str(err)) from None
    if any(s % config.patch_size for s in pre.size):
        raise e(
            f"{where}.preprocessing: size {list(pre.size)} is not a multiple of the patch {config.patch_size}"
        )
    return {**info, "preprocessing": json.loads(pre.to_json())}  # its normal form: size [height, width]


def _models(value, where: str) -> list[ModelStudy]:
    e = AnalysisError
    models, labels = [], set()
    for i, entry in enumerate(schema.listing(value, where, e, MAX_MODELS)):
        at = f"{where}[{i}]"
        entry = schema.mapping(entry, at, e, ("label", "info", "config"), ())
        label = schema.text(entry["label"], f"{at}.label", e, 200)
        if label != safe_name(label) or label in labels:
            raise e(
                f"{at}.label {clip(label)} is not a plain, distinct file name (letters, digits, '-', '_', '.')"
            )
        labels.add(label)
        try:
            config = ViTConfig.from_json(
                schema.text(entry["config"], f"{at}.config", e, 1 << 16), f"{at}.config"
            )
        except ConfigError as err:
            raise e(str(err)) from None
        models.append(ModelStudy(label, _info(entry["info"], f"{at}.info", config), config))
    if not models:
        raise e(f"{where} is empty")
    return models


def _skipped(value, where: str, n: int) -> list[dict]:
    e = AnalysisError
    out = []
    for i, s in enumerate(schema.listing(value, where, e, n)):
        at = f"{where}[{i}]"
        s = schema.mapping(s, at, e, ("position", "image", "reason"), ())
        out.append(
            {
                "position": schema.integer(s["position"], f"{at}.position", e, 0, max(n - 1, 0)),
                "image": schema.text(s["image"], f"{at}.image", e, MAX_NAME_CHARS),
                "reason": schema.text(s["reason"], f"{at}.reason", e, MAX_REASON_CHARS),
            }
        )
    return out


def _expect(value, shape, what: str) -> None:
    if tuple(np.shape(value)) != tuple(shape):
        raise AnalysisError(f"{what} has shape {tuple(np.shape(value))}, expected {tuple(shape)}")


def _check_model(ms: ModelStudy, accs: dict, i: int, analysed: int, n: int, settings: RunSettings) -> None:
    """Put model i's accumulators in place, each of the class and shape its config implies."""
    c, grid = ms.config, ms.grid
    for name, empty in ms.accumulators().items():
        acc = accs.get(f"m{i}.{name}")
        if acc is None:
            raise AnalysisError(f"the state lacks {ms.label}'s {name}")
        if type(acc) is not type(empty) or acc.settings() != empty.settings():
            raise AnalysisError(
                f"{ms.label}'s {name} is a {acc.kind} with settings {clip(acc.settings())}, "
                f"not what its config implies ({clip(empty.settings())})"
            )
        setattr(ms, name, acc)
    where = f"{ms.label}'s"
    moments = {
        "distance": (c.depth, c.num_heads),
        "rollout": grid,
        "cls_attention": (c.num_heads, *grid),
        "cls_trajectory": (c.depth + 1,),
        "token_mass": (c.depth, len(TOKEN_GROUPS)),
        "logit_lens": (c.depth + 1, 2 if c.num_classes else 1),
    }
    for name, shape in moments.items():
        acc = getattr(ms, name)
        if acc.count:
            _expect(acc._mean, shape, f"{where} {name}")
            if acc.count != analysed:
                raise AnalysisError(f"{where} {name} counts {acc.count:,} images, the state {analysed:,}")
    if not ms.cka.empty:
        _expect(ms.cka._xy, (c.depth + 1, c.depth + 1), f"{where} cka")
    h = ms.token_norms  # every token of every image analysed, in each block
    expected = analysed * np.array([*token_counts(c), grid[0] * grid[1]], np.int64)
    if not (h.counts.sum(axis=-1) == expected).all():
        raise AnalysisError(f"{where} token-norm histogram does not count the tokens of {analysed:,} images")
    if ms.pca.count != analysed * grid[0] * grid[1]:
        raise AnalysisError(f"{where} PCA counts {ms.pca.count:,} patch tokens for {analysed:,} images")
    p = ms.per_image  # a row per image analysed, or none (a state saved without its per-image rows)
    if len(p.positions) not in (0, analysed) or (len(p.positions) and p.positions.max() >= n):
        raise AnalysisError(
            f"{where} per-image rows ({len(p.positions):,}) do not match the {analysed:,} "
            f"images analysed of {n:,}"
        )
    s = ms.samples
    if not s.empty:
        k = len(s.positions)
        y, x = ms.image_size
        shapes = {
            "display": (k, y, x, 3),
            "rollout": (k, *grid),
            "cls_attention": (k, c.num_heads, *grid),
            "cls_trajectory": (k, c.depth + 1),
            "top": (k, TOP_K),
            "prob": (k, TOP_K),
            "token_norms": (k, *grid),
            "pca_tokens": (k, grid[0] * grid[1], c.dim),
            "relevance": (k, *grid),
            "input_gradients": (k, *grid),
            "integrated_gradients": (k, *grid),
            "ig_error": (k,),
            "faithfulness": (k, len(FAITHFULNESS_MAPS), 2, FAITHFULNESS_STEPS + 1),
            "explorer": (k, 0),
            "explorer_rollout": (k, 0),
        }
        if explorer.keeps_maps(c, grid, settings):
            t = explorer.tokens(c, grid)
            explored = len(explorer.blocks_of(settings.explore_blocks, c.depth, ms.label))
            shapes["explorer"] = (k, explored, c.num_heads + 1, t, t)
            shapes["explorer_rollout"] = (k, t, t)
        for field, shape in shapes.items():
            _expect(s.arrays.get(field), shape, f"{where} samples' {field}")
        if len(p.positions) and not np.isin(s.positions, p.positions).all():
            raise AnalysisError(f"{where} sample images are not among its analysed images")
    probes = ms.probes.arrays
    native = c.grid_size[0] * c.grid_size[1] if c.pos_embed != "none" else 0
    refs = len(reference_patches(c.grid_size)) if native else 0
    _expect(probes.get("position_similarity"), (refs, native), f"{where} position similarity")
    filters = np.shape(probes.get("projection_filters"))
    if len(filters) != 4 or not 1 <= filters[0] <= 64 or filters[1:] != (c.patch_size, c.patch_size, 3):
        raise AnalysisError(f"{where} projection filters have shape {filters}")


def load_study(path) -> Study:
    """One state file, every part checked (module docstring)."""
    e = AnalysisError
    accs, meta = load_states(path)
    try:
        m = schema.mapping(
            meta.get("study"),
            "study",
            e,
            ("settings", "n_images", "models", "skipped", "analysed", "shards"),
            ("cka_batches_skipped", "seconds", "backend"),
        )
        settings = RunSettings.from_recorded(m["settings"], "study.settings")
        n = schema.integer(m["n_images"], "study.n_images", e, 0, MAX_IMAGES)
        models = _models(m["models"], "study.models")
        shards = []
        for j, s in enumerate(schema.listing(m["shards"], "study.shards", e, MAX_SHARDS)):
            if not (isinstance(s, list) and len(s) == 2):
                raise e(f"study.shards[{j}] must be [index, count], got {clip(s)}")
            count = schema.integer(s[1], f"study.shards[{j}] count", e, 1, MAX_SHARDS)
            shards.append((schema.integer(s[0], f"study.shards[{j}] index", e, 0, count - 1), count))
        study = Study(models, settings, n, [list(s) for s in shards])
        study.skipped = _skipped(m["skipped"], "study.skipped", n)
        study.analysed = schema.integer(m["analysed"], "study.analysed", e, 0, n)
        study.cka_batches_skipped = schema.integer(
            m.get("cka_batches_skipped", 0), "study.cka_batches_skipped", e, 0, n
        )
        study.seconds = schema.number(m.get("seconds", 0.0), "study.seconds", e, 0.0)
        study.backend = m.get("backend", study.backend)
        if study.backend not in BACKENDS:
            raise e(f"study.backend must be one of {', '.join(BACKENDS)}, got {clip(study.backend)}")
        # Every position the shards cover is accounted for, once: analysed or skipped.
        covered = sum(len(shard_span(n, settings.batch_size, s)) for s in shards)
        if covered != study.analysed + len(study.skipped):
            raise e(
                f"the shards {clip([list(s) for s in shards])} cover {covered:,} of {n:,} images, but "
                f"{study.analysed:,} analysed and {len(study.skipped):,} skipped are recorded"
            )
        for i, ms in enumerate(models):
            _check_model(ms, accs, i, study.analysed, n, settings)
        skipped = {s["position"] for s in study.skipped}
        if len(skipped) != len(study.skipped) or skipped & set(models[0].per_image.positions.tolist()):
            raise e("skipped positions repeat, or were also analysed")
        for j, key in enumerate(study.cross):
            acc = accs.get(f"cross{j}")
            if not isinstance(acc, MinibatchCKA):
                raise e(f"the state lacks the cross-model CKA of {key[0]} and {key[1]}")
            a, b = (next(ms for ms in models if ms.label == label) for label in key)
            if not acc.empty:
                _expect(
                    acc._xy, (a.config.depth + 1, b.config.depth + 1), f"the CKA of {key[0]} and {key[1]}"
                )
            study.cross[key] = acc
    except VitopsError as err:
        raise AnalysisError(f"{path}: not a usable analysis state: {err}") from None
    return study


def load_studies(paths) -> Study:
    """Load state files and merge them into one study."""
    paths = list(paths)
    if not paths:
        raise AnalysisError("no state files given")
    study = load_study(paths[0])
    for p in paths[1:]:
        study.merge(load_study(p))
    return study
