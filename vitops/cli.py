"""Command line: `vitops convert SRC DST [--arch NAME]`, `vitops models`."""

from __future__ import annotations

import argparse
import sys


def _convert(args) -> int:
    from .convert import convert
    from .errors import VitopsError

    try:
        config = convert(args.src, args.dst, arch=args.arch, format=args.format, which=args.which,
                         labels=args.labels)
    except VitopsError as e:  # a user's mistake or an OS error, said in one line
        print(f"vitops convert: error: {e}", file=sys.stderr)
        return 2
    head = f"{config.num_classes} classes" if config.num_classes else "headless (features)"
    print(f"wrote {args.dst}: {config.name or 'custom ViT'} ({config.family}), "
          f"{config.image_size[0]}x{config.image_size[1]} px, patch {config.patch_size}, "
          f"dim {config.dim}, depth {config.depth}, {config.num_heads} heads, {head}")
    if not args.arch:
        print(f"architecture inferred from tensor shapes; family {config.family!r} sets the "
              "preprocessing; pass --arch to name it explicitly")
    return 0


def _models(args) -> int:
    from . import hub
    from .config import VARIANTS
    from .errors import VitopsError

    try:
        entries = hub.registry()
        cache = hub.home()
    except VitopsError as e:
        print(f"vitops models: error: {e}", file=sys.stderr)
        return 2
    print(f"Registry models (vitops.load(NAME) downloads, verifies and converts once; cache: {cache}):")
    for name, e in entries.items():
        pub = e.get("published") or {}
        score = (f"top-1 {pub['imagenet_top1']}" if pub.get("imagenet_top1") else
                 f"k-NN {pub.get('imagenet_knn')} / linear {pub.get('imagenet_linear')}" if "imagenet_knn" in pub
                 else "top-1 n/a")
        try:
            cached = "cached" if hub.cached_path(name).exists() else ""
        except (VitopsError, OSError):
            cached = ""
        print(f"  {name:34s} {str(e.get('arch') or '-'):34s} {score:26s} {cached}")
    print("\nArchitectures (for --arch):")
    print(f"{'name':34s} {'family':6s} {'size':>7s} {'patch':>5s} {'dim':>5s} {'depth':>5s} "
          f"{'heads':>5s} {'classes':>7s}")
    for name, c in VARIANTS.items():
        print(f"{name:34s} {c.family:6s} {c.image_size[0]:>7d} {c.patch_size:>5d} {c.dim:>5d} "
              f"{c.depth:>5d} {c.num_heads:>5d} {c.num_classes:>7d}")
    return 0


def _analyze(args) -> int:
    from . import hub
    from .report import analyze
    from .weights import WeightFileError

    images = args.images
    if not images:
        images = [str(p) for p in hub.shipped_samples()]
        if not images:
            print("vitops analyze: error: no images given and no sample images shipped", file=sys.stderr)
            return 2
        print(f"no images given: analysing the {len(images)} sample digits shipped with vitops")
    try:
        summary = analyze(args.model, images, args.out, batch_size=args.batch_size,
                          threshold=args.threshold, head_fusion=args.head_fusion,
                          discard_ratio=args.discard_ratio, family=args.family)
    except (WeightFileError, hub.HubError, ValueError, KeyError) as e:
        print(f"vitops analyze: error: {e}", file=sys.stderr)
        return 2
    for s in summary["skipped"]:
        print(f"skipped {s['image']}: {s['reason']}", file=sys.stderr)
    print(f"analysed {len(summary['images'])} image(s) in {summary['seconds']:.1f} s; wrote "
          f"{args.out}/report.html, metrics.json and {len(summary['figures'])} figures")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitops", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from .convert import FORMATS
    from .convert.releases import WHICH

    p = sub.add_parser("convert", help="convert a checkpoint into a vitops .safetensors file")
    p.add_argument("src", help="checkpoint: timm .safetensors/.pth, DeiT or DINO release .pth, "
                   "Hugging Face directory (or its weight file), Google .npz")
    p.add_argument("dst", help="output vitops .safetensors file (written atomically)")
    p.add_argument("--arch", help="architecture name, e.g. vit_small_patch16_224 or "
                   "deit_small_distilled_patch16_224 (default: inferred from shapes)")
    p.add_argument("--format", choices=FORMATS,
                   help="source format (default: detected from the file and its keys)")
    p.add_argument("--which", default=WHICH[0], choices=WHICH,
                   help="for DINO training checkpoints: which network to convert")
    p.add_argument("--labels", metavar="FILE",
                   help="class names, one per line, as many as the head has classes (default: the "
                   "checkpoint's own, or ImageNet-1k's for a 1000-class timm/DeiT/Google head)")
    p.set_defaults(func=_convert)
    p = sub.add_parser("analyze", help="analyse a model on images: figures, metrics.json, report.html")
    p.add_argument("images", nargs="*", help="image files or folders (default: the shipped sample digits)")
    p.add_argument("--model", default="digits_vit",
                   help="vitops file, registry name or shipped model (default: digits_vit, shipped)")
    p.add_argument("--out", default="vitops-report", help="output folder (default: vitops-report)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threshold", type=float, default=None,
                   help="DINO heat-map masks keeping this share of attention mass, e.g. 0.6")
    p.add_argument("--head-fusion", default="mean", choices=("mean", "max", "min"))
    p.add_argument("--discard-ratio", type=float, default=0.0)
    p.add_argument("--family", choices=("vit", "deit", "dino"), default=None,
                   help="override the preprocessing the model file names")
    p.set_defaults(func=_analyze)
    p = sub.add_parser("models", help="list the registry models and the named architectures")
    p.set_defaults(func=_models)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
