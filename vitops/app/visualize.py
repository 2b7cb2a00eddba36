"""`vitops visualize`: images that maximise MLP units of one block, as PNGs and one HTML page.

    vitops visualize --model digits_vit --block 2 --unit 5 --unit 40 --out features/

All units are optimised together (one image per unit, one batch; see
`vitops.analysis.features.visualize_feature`). The folder is written beside --out under a
temporary name and renamed at the end (`vitops.io.output_folder.OutputFolder`), so an
interrupted run leaves no half-written folder; as every vitops output, --out may only be new,
empty, or a folder vitops wrote.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import numpy as np

from ..errors import AnalysisError, ImageError
from ..io.output_folder import OutputFolder, check_output_folder

MARKER = "vitops-visualize"  # the page's generator


def add_parser(subparsers):
    """Add `visualize` to an argparse subparsers object; returns its parser (func = `run`)."""
    p = subparsers.add_parser(
        "visualize",
        help="optimise images that maximise MLP units (feature visualisation)",
        description="Feature visualisation (Ghiasi et al. 2022): for each --unit, an image that "
        "maximises that unit of the block's MLP hidden layer, averaged over the patches. "
        "Writes unit_<U>.png per unit and index.html into --out.",
    )
    p.add_argument(
        "--model",
        default="digits_vit",
        help="vitops file, registry name or shipped model (default: digits_vit, shipped)",
    )
    p.add_argument("--block", type=int, required=True, help="block index, from 0")
    p.add_argument(
        "--unit",
        type=int,
        action="append",
        required=True,
        help="MLP hidden unit of that block; repeat for several (one image each)",
    )
    p.add_argument("--out", required=True, help="output folder (written atomically)")
    p.add_argument("--steps", type=int, default=200, help="optimisation steps (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the start noise and augmentations")
    p.add_argument("--ensemble", type=int, default=4, help="augmented copies per image and step (default: 4)")
    p.add_argument("--lr", type=float, default=0.05, help="step size in normalised pixels (default: 0.05)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Handler of `vitops visualize`: optimise, write, report one line. Raises vitops errors
    (bad model, block, unit, settings or output folder) for the CLI to print."""
    from ..analysis.features import visualize_feature
    from ..hub.load import resolve_model

    out = Path(args.out)
    repeated = sorted({u for u in args.unit if args.unit.count(u) > 1})
    if repeated:
        raise AnalysisError(f"--unit {', '.join(map(str, repeated))} given more than once")
    check_output_folder(out, [args.model])  # before any work
    model = resolve_model(args.model)  # an unreadable model fails here, before any work
    start = time.perf_counter()
    bar = _progress(args.steps)
    images, activation = visualize_feature(
        model,
        args.block,
        args.unit,
        steps=args.steps,
        seed=args.seed,
        ensemble=args.ensemble,
        lr=args.lr,
        callback=bar,
    )
    _, initial = visualize_feature(model, args.block, args.unit, steps=0, seed=args.seed)
    write(
        out,
        model,
        args.block,
        list(args.unit),
        images,
        activation,
        initial,
        {
            "steps": args.steps,
            "seed": args.seed,
            "ensemble": args.ensemble,
            "lr": args.lr,
            "seconds": time.perf_counter() - start,
        },
    )
    print(
        f"wrote {out}/index.html and {len(args.unit)} image(s): block {args.block}, units "
        + ", ".join(f"{u} ({a:.3g})" for u, a in zip(args.unit, activation))
    )
    return 0


def _progress(steps: int):
    """A Keras progress bar over the steps, updated with the mean activation reached."""
    import keras

    bar = keras.utils.Progbar(steps, unit_name="step", stateful_metrics=["activation"])
    return lambda step, act: bar.update(step, values=[("activation", float(np.mean(act)))])


def png_bytes(image: np.ndarray) -> bytes:
    """(Y, X, 3) float RGB in [0, 1] -> PNG file bytes."""
    from ..io.image_file import _cv2

    cv2 = _cv2()
    rgb = np.clip(np.round(np.asarray(image) * 255), 0, 255).astype(np.uint8)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise ImageError("OpenCV could not encode the image as PNG")
    return data.tobytes()


def write(out, model, block: int, units: list, images, activation, initial, settings: dict) -> None:
    """unit_<U>.png per unit and index.html into the folder out, atomically (see
    `vitops.io.output_folder.OutputFolder`: new, empty, or a folder vitops wrote)."""
    from ..preprocess import Preprocessing, denormalize

    out = Path(out)
    with OutputFolder(out, "visualize") as tmp:
        shown = denormalize(images, Preprocessing.for_model(model.config, model.metadata))
        pngs = {u: png_bytes(img) for u, img in zip(units, shown)}
        for u, data in pngs.items():
            (tmp / f"unit_{u}.png").write_bytes(data)
        (tmp / "index.html").write_text(_html(model, block, units, pngs, activation, initial, settings))


def _html(model, block, units, pngs, activation, initial, settings) -> str:
    e = html.escape
    c = model.config
    name = c.name or "model"
    figures = "".join(
        f"<figure><img alt='block {block} unit {u}' src='data:image/png;base64,"
        f"{base64.b64encode(pngs[u]).decode('ascii')}'>"
        f"<figcaption>block {block}, unit {u}: activation {a:.4g} (start {a0:.4g})</figcaption></figure>"
        for u, a, a0 in zip(units, activation, initial)
    )
    return "\n".join(
        [
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
            f"<meta name='generator' content='{MARKER}'>",
            f"<title>vitops feature visualisation: {e(name)}, block {block}</title>",
            "<style>body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
            "figure{display:inline-block;margin:.5em;text-align:center}"
            "img{width:192px;height:auto;image-rendering:pixelated;border:1px solid #ddd}"
            "figcaption{color:#555;font-size:.85em;max-width:192px}</style>",
            "</head><body>",
            f"<h1>Feature visualisation: {e(name)}, block {block}</h1>",
            f"<p>Each image maximises one unit of block {block}'s MLP hidden layer (after the GELU), "
            f'averaged over the patches (Ghiasi et al. 2022, "What do Vision Transformers Learn? A Visual '
            f"Exploration\"); the activation is the unit's on the image shown, the start its value on the "
            f"starting noise. {e(c.family)} ViT, {c.image_size[0]}x{c.image_size[1]} px, patch {c.patch_size}, "
            f"{c.depth} blocks, MLP width {c.mlp_dim}. Settings: "
            + e(
                ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in settings.items())
            )
            + ".</p>",
            figures,
            "</body></html>",
        ]
    )
