"""The Python side of `vitops analyze` and `vitops report`.

    summary = analyze(["digits_vit", "digits_deit"], ["a.png", "photos/"], "out/")
    summary = report_from_states(["s0.safetensors", "s1.safetensors"], "out/")   # merged shards

Computing is `vitops.app.run` (a Study); writing is `vitops.app.report`."""

from __future__ import annotations

import json

from ..errors import AnalysisError
from ..io.output_folder import OutputFolder
from .per_image import PerImageWriter
from .report import write_into
from .run import run_study
from .settings import RunSettings
from .study import load_studies

def analyze(models, images, out_dir, *, preprocessing=None, shard=None, devices=None, save_state=None,
            progress: bool = True, **settings) -> dict:
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
    run = dict(settings=RunSettings(**settings), keep_per_image=save_state is not None, shard=shard,
               devices=devices, preprocessing=preprocessing, progress=progress)
    if out_dir is None:  # a shard's state alone: no figures
        if save_state is None:
            raise AnalysisError("nothing to write: give an output folder, a state file, or both")
        import tempfile

        with tempfile.TemporaryDirectory(prefix="vitops-per-image-") as tmp:
            study = run_study(models, images, per_image_dir=tmp, **run)
            study.save(save_state)
        return _state_summary(study)
    with OutputFolder(out_dir) as tmp:
        study = run_study(models, images, per_image_dir=tmp / "per_image", **run)
        if save_state is not None:
            study.save(save_state)
        if study.analysed == 0:  # a shard past the last batch: its (empty) state still merges
            summary = _state_summary(study)
            (tmp / "metrics.json").write_text(json.dumps(summary))
            return summary
        return write_into(study, tmp)


def _state_summary(study) -> dict:
    """What a run that writes no report says about itself."""
    return {"models": {ms.label: {} for ms in study.models}, "figures": [],
            "images": {"total": study.n_images, "analysed": study.analysed, "skipped": study.skipped,
                       "shards": study.shards},
            "seconds": study.seconds}


def report_from_states(states, out_dir) -> dict:
    """Merge the state files of shards (`analyze(..., save_state=...)`) and write the report one
    run over all their images would have written, per-image files included."""
    study = load_studies(states)
    with OutputFolder(out_dir) as tmp:
        for ms in study.models:
            writer = PerImageWriter(tmp / "per_image", ms.label, study.n_images, ms.config.depth,
                                    ms.config.num_heads, ms.grid, ms.info.get("labels"),
                                    bool(ms.config.num_classes))
            writer.write_all(ms.per_image)
            writer.close()
        return write_into(study, tmp)
