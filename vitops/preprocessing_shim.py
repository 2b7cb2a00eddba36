"""Temporary adapter onto vitops.preprocess (to be replaced by its Preprocessing API)."""

from __future__ import annotations

import os

import numpy as np

from .preprocess import DEFAULT_CROP_PCT, denormalize, normalize, read_image, resize_and_crop, to_rgb


def read_rgb(item):
    return read_image(item) if isinstance(item, (str, os.PathLike)) else to_rgb(item)


class _Prep:
    def __init__(self, size, family, crop_pct):
        self.size, self.family, self.crop_pct = size, family, crop_pct

    def prepare(self, rgb):
        return normalize(resize_and_crop(rgb, self.size, self.crop_pct), self.family)

    def display(self, x):
        return (np.nan_to_num(denormalize(x, self.family)) * 255 + 0.5).astype(np.uint8)

    def describe(self):
        return {"size": list(self.size), "family": self.family, "crop_pct": self.crop_pct}


def preparer_for(model, override=None):
    meta = getattr(model, "metadata", {}) or {}
    override = override or {}
    crop = override.get("crop_pct") or float(meta.get("crop_pct", DEFAULT_CROP_PCT))
    return _Prep(model.config.image_size, override.get("family") or model.config.family, crop)
