"""Command line: `vitops analyze | report | convert | visualize | models`.

Every user mistake or OS error ends in one line and exit code 2; anything else is an internal
error: one line, exit code 1, and `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..core.config import FAMILIES
from ..errors import AnalysisError, VitopsError, os_reason

DEFAULT_MODEL = "digits_vit"
DEFAULT_OUT = "vitops-report"


def _convert(args) -> int:
    from ..converters import convert

    config = convert(
        args.src,
        args.dst,
        arch=args.arch,
        format=args.format,
        which=args.which,
        labels=args.labels,
        act=args.act,
    )
    head = f"{config.num_classes} classes" if config.num_classes else "headless (features)"
    if config.proj_dim:
        head += f", a {config.proj_dim}-dim projection"
    extras = [f"{config.reg_tokens} registers"] if config.reg_tokens else []
    extras += ["no class token"] if not config.class_token else []
    extras += ["2-D RoPE"] if config.rope_base else []
    print(
        f"wrote {args.dst}: {config.name or 'custom ViT'} ({config.family}), "
        f"{config.image_size[0]}x{config.image_size[1]} px, patch {config.patch_size}, "
        f"dim {config.dim}, depth {config.depth}, {config.num_heads} heads, {config.act}, "
        + ", ".join([head, *extras])
    )
    if not args.arch:
        print(
            f"architecture inferred from tensor shapes; family {config.family!r} sets the "
            "preprocessing; pass --arch to name it explicitly"
        )
    return 0


def _models(args) -> int:
    from ..core.variants import VARIANTS
    from ..hub import cache as hub
    from ..hub import shipped
    from ..hub.registry import PUBLISHED_SCORES

    entries = hub.registry()
    cache = hub.home()
    print("Shipped models (vitops.load(NAME), offline):")
    for name in shipped.MODELS:
        print(f"  {name}")
    print(f"\nRegistry models (vitops.load(NAME) downloads, verifies and converts once; cache: {cache}):")
    for name, e in entries.items():
        pub = e.get("published") or {}
        score = (
            " / ".join(f"{label} {pub[k]}" for k, label in PUBLISHED_SCORES.items() if pub.get(k)) or "n/a"
        )
        try:
            cached = "cached" if hub.cached_path(name).exists() else ""
        except (VitopsError, OSError):
            cached = ""
        print(f"  {name:34s} {str(e.get('arch') or '-'):38s} {score:26s} {cached}")
    print("\nArchitectures (for --arch):")
    print(
        f"{'name':34s} {'family':6s} {'size':>7s} {'patch':>5s} {'dim':>5s} {'depth':>5s} "
        f"{'heads':>5s} {'classes':>7s}"
    )
    for name, c in VARIANTS.items():
        print(
            f"{name:34s} {c.family:6s} {c.image_size[0]:>7d} {c.patch_size:>5d} {c.dim:>5d} "
            f"{c.depth:>5d} {c.num_heads:>5d} {c.num_classes:>7d}"
        )
    return 0


def _analyze(args) -> int:
    from ..hub import shipped
    from .commands import analyze
    from .inputs import parse_shard

    process = None
    if args.cluster:  # before anything touches a device
        from ..backend.distribute import join_cluster

        process = join_cluster()
        if args.devices is None:
            args.devices = "all"
    images = args.images
    if not images:
        images = [str(p) for p in shipped.samples()]
        if not images:
            raise AnalysisError("no images given and no sample images shipped")
        print(f"no images given: analysing the {len(images)} sample digits shipped with vitops")
    overrides = {k: v for k, v in (("family", args.family), ("crop_pct", args.crop_pct)) if v is not None}
    out = args.out if args.out is not None or args.save_state else DEFAULT_OUT
    from .settings import RunSettings

    settings = {f: getattr(args, f) for f in RunSettings.__dataclass_fields__}
    summary = analyze(
        args.model or [DEFAULT_MODEL],
        images,
        out,
        preprocessing=overrides or None,
        shard=parse_shard(args.shard) if args.shard else None,
        devices=args.devices,
        save_state=args.save_state,
        **settings,
    )
    if process is not None and process[0] != 0:
        print(f"process {process[0]} of {process[1]}: analysed its share; process 0 writes the results")
        return 0
    if out is not None:
        _print_summary(summary, out)
    if args.save_state:
        im = summary["images"]
        print(
            f"analysed {im['analysed']} image(s) ({len(im['skipped'])} skipped); wrote the analysis state to "
            f"{args.save_state} (merge shards with `vitops report`)"
        )
    return 0


def _report(args) -> int:
    from .commands import report_from_states

    summary = report_from_states(args.states, args.out)
    _print_summary(summary, args.out)
    return 0


def _print_summary(summary, out) -> None:
    im = summary["images"]
    for s in im["skipped"][:20]:
        print(f"skipped {s['image']}: {s['reason']}", file=sys.stderr)
    if len(im["skipped"]) > 20:
        print(f"skipped {len(im['skipped']) - 20} more image(s) (metrics.json lists them)", file=sys.stderr)
    if summary.get("non_finite_values"):
        print(
            f"warning: {summary['non_finite_values']} value(s) were not finite (NaN/inf inputs?); "
            "metrics.json holds null for them",
            file=sys.stderr,
        )
    print(
        f"analysed {im['analysed']} of {im['total']} image(s) with {', '.join(summary['models'])} in "
        f"{summary['seconds']:.1f} s; wrote {out}/report.html, metrics.json, {len(summary['figures'])} "
        "figures and per_image/"
    )


def build_parser() -> argparse.ArgumentParser:
    from .settings import add_options

    parser = argparse.ArgumentParser(
        prog="vitops",
        description=__doc__.split("\n")[0],
        epilog="--debug (anywhere): show tracebacks instead of one-line errors",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from ..converters import FORMATS
    from ..converters.releases import WHICH
    from ..core.config import ACTIVATIONS

    p = sub.add_parser("convert", help="convert a checkpoint into a vitops .safetensors file")
    p.add_argument(
        "src",
        help="checkpoint: timm .safetensors/.pth, a release file (DeiT, DINO, DINOv2, DINOv3, "
        "OpenCLIP), Hugging Face directory (or its weight file), Google .npz",
    )
    p.add_argument("dst", help="output vitops .safetensors file (written atomically)")
    p.add_argument(
        "--arch",
        help="architecture name, e.g. vit_small_patch16_224 or "
        "deit_small_distilled_patch16_224 (default: inferred from shapes)",
    )
    p.add_argument(
        "--format", choices=FORMATS, help="source format (default: detected from the file and its keys)"
    )
    p.add_argument(
        "--which",
        default=WHICH[0],
        choices=WHICH,
        help="for DINO training checkpoints: which network to convert",
    )
    p.add_argument(
        "--act",
        choices=ACTIVATIONS,
        help="MLP activation where the checkpoint cannot say: quick_gelu for OpenAI's CLIP "
        "weights, gelu for LAION's (default: from --arch, the format, or gelu)",
    )
    p.add_argument(
        "--labels",
        metavar="FILE",
        help="class names, one per line, as many as the head has classes (default: the "
        "checkpoint's own, or ImageNet-1k's for a 1000-class timm/DeiT/Google head)",
    )
    p.set_defaults(func=_convert)
    p = sub.add_parser(
        "analyze",
        help="analyse models on images: figures, metrics.json, report.html",
        description="Analyse one or more models over images, streaming: every analysis is "
        "computed inside the compiled forward pass, and memory does not grow with the number "
        "of images.",
    )
    p.add_argument("images", nargs="*", help="image files or folders (default: the shipped sample digits)")
    p.add_argument(
        "--model",
        action="append",
        help="vitops file, registry name or shipped model; repeat to compare models side by "
        f"side (default: {DEFAULT_MODEL}, shipped)",
    )
    p.add_argument(
        "--out",
        default=None,
        help=f"output folder (default: {DEFAULT_OUT}, or none when "
        "--save-state is given): new, empty, or one vitops wrote; replaced only when the run succeeds",
    )
    add_options(p)  # the RunSettings fields: --batch-size, --show, --threshold, ...
    p.add_argument(
        "--family",
        choices=FAMILIES,
        default=None,
        help="override the preprocessing family the model file names",
    )
    p.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        help="override the centre-crop fraction the model file records",
    )
    p.add_argument("--shard", help="I/N: analyse the I-th of N slices of the image list (0-based)")
    p.add_argument("--save-state", help="also write every accumulator to this file, for `vitops report`")
    p.add_argument("--devices", default=None, help="data-parallel devices on JAX: 'all' or a count")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="join a multi-process JAX run first (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, "
        "JAX_PROCESS_ID, or a SLURM, Open MPI or Kubernetes job), over all its devices; "
        "process 0 writes the results",
    )
    p.set_defaults(func=_analyze)
    p = sub.add_parser(
        "report",
        help="merge analysis states of shards into one report",
        description="Merge the --save-state files of `vitops analyze --shard I/N` runs into "
        "the report one run over all their images would write.",
    )
    p.add_argument("states", nargs="+", help="state files written by `vitops analyze --save-state`")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    p.set_defaults(func=_report)
    from .visualize import add_parser as add_visualize

    add_visualize(sub)
    p = sub.add_parser("models", help="list the registry models and the named architectures")
    p.set_defaults(func=_models)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    from ..backend.select import choose_backend
    from ..io.signals import exit_on_sigterm, signal_exception_in

    exit_on_sigterm()  # SIGTERM runs the same clean-up as an error: no temporary stays
    chosen, problem = choose_backend()
    if problem:
        print(f"vitops: error: {problem}", file=sys.stderr)
        return 2
    if chosen:
        print(
            f"vitops: KERAS_BACKEND is not set and Keras' configured backend is not installed; "
            f"using {chosen}",
            file=sys.stderr,
        )
    args = build_parser().parse_args(argv)
    command = f"vitops {args.command}"
    try:
        return args.func(args)
    except Exception as e:
        # A signal's exception that a C function turned into a SystemError, or an error message
        # made from one: the program still ends as the signal asked (143, or 130 for Ctrl-C),
        # its clean-up already done.
        signalled = signal_exception_in(e)
        if isinstance(signalled, KeyboardInterrupt):
            print(f"{command}: interrupted", file=sys.stderr)
            return 130
        if signalled is not None:
            raise signalled from None
        if debug:
            raise
        return _report_error(command, e)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


def _report_error(command: str, e: Exception) -> int:
    """Print what went wrong in one line; returns the exit code (2: the input, 1: vitops)."""
    if isinstance(e, VitopsError):
        print(f"{command}: error: {e}", file=sys.stderr)
        return 2
    if isinstance(e, OSError):  # a full disk, a folder that vanished: the OS's words and the path
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{command}: error: {os_reason(e)}{where}", file=sys.stderr)
        return 2
    print(
        f"{command}: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
