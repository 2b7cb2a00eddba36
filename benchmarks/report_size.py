"""report.html's size with the attention explorer: two ViT-B/16 at 224 px (random weights, as
timm initialises them and with every tensor randomised), eight sample photographs, the default
explorer settings and every block and head.

    KERAS_BACKEND=jax python benchmarks/report_size.py [--explore all:400 ...]

Prints JSON: per weights and explorer setting, the page's size in MB, the explorer's share,
the bits per value chosen and the seconds the run took.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def photos(folder: Path) -> list[str]:
    """Eight photographs: the three shipped with matplotlib and scikit-learn, flipped and cropped."""
    import cv2
    import matplotlib.cbook
    import sklearn.datasets

    sources = [matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)]
    sources += list(sklearn.datasets.load_sample_images().filenames)
    paths = []
    for k in range(8):
        img = cv2.imread(str(sources[k % 3]))
        img = img[:, ::-1] if k // 3 == 1 else img[: img.shape[0] * 3 // 4] if k // 3 == 2 else img
        paths.append(str(folder / f"photo_{k}.png"))
        cv2.imwrite(paths[-1], img)
    return paths


def models(folder: Path, randomised: bool) -> list[str]:
    import timm
    import torch
    from helpers.timm_reference import make_timm, save_state_dict

    import vitops

    out = []
    for seed in (0, 1):
        if randomised:
            ref = make_timm("vit_base_patch16_224", seed=seed)
        else:
            torch.manual_seed(seed)
            ref = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
        save_state_dict(ref, folder / f"timm{seed}.safetensors")
        out.append(str(folder / f"vit_b{seed}.safetensors"))
        vitops.convert(folder / f"timm{seed}.safetensors", out[-1], arch="vit_base_patch16_224")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--explore",
        nargs="+",
        default=["last:3", "all:400"],
        help="explore_blocks:report_mb settings to measure",
    )
    args = parser.parse_args()
    from vitops.app.commands import analyze

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        images = photos(tmp)
        for randomised in (False, True):
            folder = tmp / ("random" if randomised else "init")
            folder.mkdir()
            files = models(folder, randomised)
            for setting in args.explore:
                blocks, mb = setting.split(":")
                out = folder / f"out_{blocks}"
                start = time.perf_counter()
                summary = analyze(
                    files, images, out, show=8, explore_blocks=blocks, report_mb=float(mb), progress=False
                )
                rows.append(
                    {
                        "weights": "every tensor randomised" if randomised else "timm's initialisation",
                        "explore_blocks": blocks,
                        "report_mb_setting": float(mb),
                        "report_mb": round(os.path.getsize(out / "report.html") / 1e6, 2),
                        "explorer_mb": round(summary["explorer"].get("bytes", 0) / 1e6, 2),
                        "bits": summary["explorer"].get("bits"),
                        "omitted": summary["explorer"].get("omitted") or None,
                        "seconds": round(time.perf_counter() - start, 1),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
