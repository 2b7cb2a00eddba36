"""The settings of an analysis run, and their defaults: the one place both live.

The CLI's defaults, `vitops.app.commands.analyze`'s and a state file's all come from
`RunSettings`; a state file records `recorded()` (everything that changes a number), and two
states merge only when those agree.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

from ..analysis.reductions import ANALYSIS_MEMORY_BYTES, Reductions
from ..analysis.rollout import HEAD_FUSIONS, rollout_options
from ..errors import AnalysisError, clip
from .explorer import BITS, parse_blocks

# Bounds on what a caller may ask for: a batch is held in memory as images (B, Y, X, 3) and the
# per-image outputs; sample images are drawn into one figure.
MAX_BATCH = 4096
MAX_SHOW = 256
MAX_WORKERS = 64
MAX_MEMORY_MB = 1 << 20  # 1 TiB


def _count(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise AnalysisError(f"{name} must be an integer in [{low}, {high}], got {clip(value)}")
    return int(value)


@dataclass(frozen=True)
class RunSettings:
    """What `vitops analyze` computes and how; every model of a run shares these.

    batch_size: images per forward pass (minibatch CKA's batches: at least 4 for a CKA term);
    head_fusion, discard_ratio: attention rollout's (Abnar & Zuidema 2020); threshold: DINO's
    attention-mass masks of the last block's class-token attention, or None; show: sample images
    drawn in the report, spread evenly over the list; explain: each sample image's relevance for
    its top class (Chefer et al. 2021), gradient x input and integrated gradients; norm_threshold:
    the high-norm token threshold (None: Tukey's far fence); pca_step: the step whose patch
    tokens the PCA reads; faithfulness: deletion and insertion curves of the sample images'
    maps; explore_blocks, report_mb: the report's attention explorer and the page's size (`vitops.app.explorer`);
    workers: image-decoding threads (speed only).
    """

    # metadata: the command-line option of each field (`options`), its help and argparse type
    batch_size: int = field(default=8, metadata={"help": "images per batch", "type": int})
    head_fusion: str = field(
        default="mean", metadata={"help": "how the rollout fuses heads", "choices": HEAD_FUSIONS}
    )
    discard_ratio: float = field(
        default=0.0, metadata={"help": "share of the weakest attention the rollout drops", "type": float}
    )
    threshold: float | None = field(
        default=None,
        metadata={
            "help": "DINO heat-map masks keeping this share of attention mass, e.g. 0.6",
            "type": float,
        },
    )
    show: int = field(
        default=8,
        metadata={"help": "sample images drawn in the report, spread evenly over the list", "type": int},
    )
    explain: bool = field(
        default=False,
        metadata={
            "help": "also draw each sample image's relevance for its "
            "top class (Chefer et al. 2021, gradient-weighted attention), "
            "gradient x input and integrated gradients, beside the rollout",
            "action": "store_true",
        },
    )
    norm_threshold: float | None = field(
        default=None,
        metadata={
            "help": "token norms above this are flagged as high-norm outliers (Darcet et al. 2024); "
            "default: Q3 + 3 (Q3 - Q1) of the last block's patch-token norms",
            "type": float,
        },
    )
    pca_step: int = field(
        default=-1,
        metadata={
            "help": "whose patch tokens the PCA feature maps read: 0 the embeddings, i the output of "
            "block i, -1 the last block (after the final norm, as DINOv2's figures)",
            "type": int,
        },
    )
    faithfulness: bool = field(
        default=False,
        metadata={
            "help": "deletion and insertion curves (Petsiuk et al. 2018) of every map drawn for the "
            "sample images, and of a random map (slow: about 200 forward passes per sample image)",
            "action": "store_true",
        },
    )
    explore_blocks: str = field(
        default="last",
        metadata={
            "help": "the blocks whose attention the report's explorer shows for the sample images, every "
            "head and query token: 'last', 'all', 'none' or block numbers such as 1,6,12",
            "type": str,
        },
    )
    report_mb: float = field(
        default=4.5,
        metadata={
            "help": "the size report.html aims for, in MB: the explorer's maps take what the figures leave, "
            f"quantised to the finest of {', '.join(map(str, BITS))} bits per value that fits, or are left out",
            "type": float,
        },
    )
    workers: int = field(default=2, metadata={"help": "image decoding threads", "type": int})
    memory_mb: int = field(
        default=ANALYSIS_MEMORY_BYTES >> 20,
        metadata={
            "help": "memory the in-forward analyses may hold beyond the forward pass, in MiB: "
            "attention read in chunks of query rows, the rollout's factors kept or recomputed",
            "type": int,
        },
    )

    def __post_init__(self):
        object.__setattr__(self, "batch_size", _count(self.batch_size, "batch size", 1, MAX_BATCH))
        object.__setattr__(self, "show", _count(self.show, "show (sample images)", 0, MAX_SHOW))
        object.__setattr__(self, "workers", _count(self.workers, "workers", 0, MAX_WORKERS))
        object.__setattr__(self, "memory_mb", _count(self.memory_mb, "memory_mb", 1, MAX_MEMORY_MB))
        fusion, ratio = rollout_options(self.head_fusion, self.discard_ratio)
        object.__setattr__(self, "discard_ratio", ratio)
        t = self.threshold
        if t is not None:
            if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 < t <= 1.0:
                raise AnalysisError(f"threshold must be a number in (0, 1], got {clip(t)}")
            object.__setattr__(self, "threshold", float(t))
        if isinstance(self.pca_step, bool) or not isinstance(self.pca_step, int) or self.pca_step < -1:
            raise AnalysisError(
                f"pca step must be -1 (the last block) or a block number, got {clip(self.pca_step)}"
            )
        n = self.norm_threshold
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, numbers.Real) or not 0.0 < n < float("inf"):
                raise AnalysisError(f"norm threshold must be a positive number, got {clip(n)}")
            object.__setattr__(self, "norm_threshold", float(n))
        if not isinstance(self.faithfulness, bool):
            raise AnalysisError(f"faithfulness must be True or False, got {clip(self.faithfulness)}")
        object.__setattr__(self, "explore_blocks", parse_blocks(self.explore_blocks))
        m = self.report_mb
        if isinstance(m, bool) or not isinstance(m, numbers.Real) or not 0.0 < m <= MAX_MEMORY_MB:
            raise AnalysisError(f"report_mb must be a number of MB in (0, {MAX_MEMORY_MB}], got {clip(m)}")
        object.__setattr__(self, "report_mb", float(m))
        if not isinstance(self.explain, bool):
            raise AnalysisError(f"explain must be True or False, got {clip(self.explain)}")

    # Fields that only change how fast a run goes, not its numbers: not recorded, not compared.
    # (memory_mb: chunked and whole maps give the same numbers to float32 rounding.)
    _SPEED_ONLY = ("workers", "memory_mb")

    def recorded(self) -> dict:
        """The settings that decide the numbers: what a state file and metrics.json record."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self._SPEED_ONLY}

    @classmethod
    def from_recorded(cls, fields, source: str = "settings") -> RunSettings:
        """From `recorded()` as read back from a file: unknown fields are an error."""
        if not isinstance(fields, dict):
            raise AnalysisError(f"{source}: settings must be an object, got {type(fields).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - set(cls._SPEED_ONLY)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise AnalysisError(f"{source}: unknown settings {clip(unknown)}")
        return cls(**fields)

    def reductions(self) -> Reductions:
        """What each model's compiled forward pass computes block by block."""
        return Reductions(
            distance=True,
            rollout="cls",
            head_fusion=self.head_fusion,
            discard_ratio=self.discard_ratio,
            cls_attention=True,
            cls_trajectory=True,
            grams=True,
            token_mass=True,
            token_norms=True,
            logit_lens=True,
            pca=True,
            pca_step=self.pca_step,
            memory=self.memory_mb << 20,
        )


def add_options(parser) -> None:
    """One command-line option per RunSettings field (--batch-size, ...), with its default and
    help from the field itself: the CLI states none of them again."""
    for f in dataclasses.fields(RunSettings):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        if meta.get("action") != "store_true" and f.default is not None:
            help_text += f" (default {f.default})"
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=help_text, **meta)
