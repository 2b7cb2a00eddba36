"""The Python side of `vitops analyze` and `vitops report`.

    summary = analyze(["digits_vit", "digits_deit"], ["a.png", "photos/"], "out/")
    summary = report_from_states(["s0.safetensors", "s1.safetensors"], "out/")   # merged shards

Computing is `vitops.app.run` (a Study); writing is `vitops.app.report`."""

from __future__ import annotations

import json
import os

from ..errors import AnalysisError, OutputError
from ..io.output_folder import OutputFolder, is_inside
from ..io.state_file import is_state_file
from ..io.temporary import check_output_file
from .per_image import TOP_K, PerImageWriter
from .report import write_into
from .run import run_study
from .settings import RunSettings
from .state import load_studies


def analyze(
    models,
    images,
    out_dir,
    *,
    preprocessing=None,
    shard=None,
    devices=None,
    save_state=None,
    progress: bool = True,
    **settings,
) -> dict:
    """Analyse one or more models over the images and write the report into out_dir.

    models: a model, file, shipped or registry name, or a list of them (one column each).
    out_dir: None writes no report, only the state (save_state must then be given).
    preprocessing: overrides of the preprocessing each weight file records (one dict for all
    models, or one per model). shard (I, N): analyse the I-th of N slices of the image list.
    save_state: also write the study's state (all accumulators) to this file, for
    `vitops report` to merge. settings: the fields of `RunSettings` (batch_size, head_fusion,
    discard_ratio, threshold, show, explain, workers), each defaulting to RunSettings'. Returns
    the summary that metrics.json holds.
    """
    if save_state is not None:  # before the work, not after it: a refusal then would lose it all
        save_state = check_output_file(save_state, OutputError, is_state_file, "analysis state file")
        if out_dir is not None and is_inside(save_state, out_dir):  # the swap would replace it
            raise OutputError(
                f"the state file {save_state} lies inside the output folder {out_dir}, which "
                "the run replaces as a whole; write the state elsewhere"
            )
    run = dict(
        settings=RunSettings(**settings),
        keep_per_image=save_state is not None,
        shard=shard,
        devices=devices,
        preprocessing=preprocessing,
        progress=progress,
    )
    from ..backend.distribute import is_writer

    if not is_writer():  # a multi-process run: the first process writes the report and the state
        study = run_study(models, images, per_image_dir=None, **dict(run, keep_per_image=False))
        return _state_summary(study)
    if out_dir is None:  # a shard's state alone: no figures
        if save_state is None:
            raise AnalysisError("nothing to write: give an output folder, a state file, or both")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vitops-per-image-") as tmp:
            study = run_study(models, images, per_image_dir=tmp, **run)
            study.save(save_state)
        return _state_summary(study)
    with OutputFolder(out_dir, "analyze", inputs=_paths(models, images)) as tmp:
        study = run_study(models, images, per_image_dir=tmp / "per_image", **run)
        if save_state is not None:
            study.save(save_state)
        if study.analysed == 0:  # a shard past the last batch: its (empty) state still merges
            summary = _state_summary(study)
            (tmp / "metrics.json").write_text(json.dumps(summary))
            return summary
        return write_into(study, tmp)


def _paths(*groups) -> list:
    """The paths among the run's inputs (models and images may also be loaded models and arrays)."""
    out = []
    for group in groups:
        items = group if isinstance(group, (list, tuple)) else [group]
        out.extend(i for i in items if isinstance(i, (str, os.PathLike)) and os.path.lexists(i))
    return out


def _state_summary(study) -> dict:
    """What a run that writes no report says about itself."""
    return {
        "models": {ms.label: {} for ms in study.models},
        "figures": [],
        "images": {
            "total": study.n_images,
            "analysed": study.analysed,
            "skipped": study.skipped,
            "shards": study.shards,
        },
        "seconds": study.seconds,
    }


# The per-image arrays hold a row for every image of the list, NaN where a state given did not
# analyse it. A state file justifies rows it holds; the empty rows of the shards not given are
# written only within this much, or within EMPTY_ROWS_FACTOR times the rows present.
EMPTY_ROWS_BUDGET = 256 << 20
EMPTY_ROWS_FACTOR = 16


def per_image_bytes(study) -> int:
    """Bytes of the per-image arrays a report of this study writes (every model, every image)."""
    row = sum(
        4 * (ms.config.depth * ms.config.num_heads + ms.grid[0] * ms.grid[1] + 2 * TOP_K)
        for ms in study.models
    )
    return study.n_images * row


def report_from_states(states, out_dir) -> dict:
    """Merge the state files of shards (`analyze(..., save_state=...)`) and write the report one
    run over all their images would have written, per-image files included."""
    states = list(states)
    study = load_studies(states)
    size = per_image_bytes(study)
    present = (study.analysed + len(study.skipped)) * (size // max(study.n_images, 1))
    if size > max(EMPTY_ROWS_BUDGET, EMPTY_ROWS_FACTOR * present):
        raise AnalysisError(
            f"the states cover {study.analysed + len(study.skipped):,} of the {study.n_images:,} images they "
            f"claim; their per-image files would be {size / 2**30:,.1f} GiB of mostly empty rows. Give the "
            "states of the other shards too"
        )
    with OutputFolder(out_dir, "report", inputs=states) as tmp:
        for ms in study.models:
            writer = PerImageWriter(
                tmp / "per_image",
                ms.label,
                study.n_images,
                ms.config.depth,
                ms.config.num_heads,
                ms.grid,
                ms.info.get("labels"),
                bool(ms.config.num_classes),
            )
            writer.write_all(ms.per_image)
            writer.close()
        return write_into(study, tmp)
