"""Figures of the analyses, as matplotlib Figures built from arrays (no pyplot state).

Every function takes numpy arrays (the numbers in metrics.json) and returns a Figure whose
artists hold exactly those numbers, so a figure can be checked on its data.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def mean_attention_distance(mean: np.ndarray, std: np.ndarray | None = None, title: str = "") -> Figure:
    """ViT paper Fig. 7 (left): one dot per head, blocks along x. mean, std: (blocks, heads)."""
    blocks, heads = mean.shape
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = np.repeat(np.arange(blocks), heads)
    ax.scatter(xs, mean.reshape(-1), c=np.tile(np.arange(heads), blocks), cmap="tab20", s=18)
    if std is not None:
        ax.errorbar(xs, mean.reshape(-1), yerr=std.reshape(-1), fmt="none", ecolor="0.7", lw=0.6, zorder=0)
    ax.set_xlabel("block (network depth)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(range(blocks))
    ax.set_title(title or "Mean attention distance per head")
    ax.grid(alpha=0.3)
    return fig


def _upsample(m: np.ndarray, shape) -> np.ndarray:
    import cv2

    return cv2.resize(np.asarray(m, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def rollout_overlays(images: np.ndarray, maps: np.ndarray, names, title: str = "") -> Figure:
    """Each image beside its CLS attention rollout. images (B, H, W, 3) in [0, 1]; maps (B, gh, gw)."""
    n = len(images)
    fig = Figure(figsize=(4.2, 2.2 * n), layout="constrained")
    axes = fig.subplots(n, 2, squeeze=False)
    for i in range(n):
        m = maps[i] / max(float(maps[i].max()), 1e-12)
        axes[i, 0].imshow(images[i])
        axes[i, 0].set_title(str(names[i]), fontsize=8)
        axes[i, 1].imshow(images[i])
        axes[i, 1].imshow(_upsample(m, images[i].shape[:2]), cmap="inferno", alpha=0.6)
        axes[i, 1].set_title("attention rollout", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.suptitle(title or "Attention rollout (CLS row)")
    return fig


def attention_heatmaps(image: np.ndarray, maps: np.ndarray, masks: np.ndarray | None = None,
                       title: str = "") -> Figure:
    """Last block, CLS to patches, one panel per head. maps (heads, gh, gw); masks likewise."""
    heads = maps.shape[0]
    rows, cols = _grid(heads, 6)
    fig = Figure(figsize=(2.2 * cols, 2.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for h, ax in enumerate(axes):
        ax.axis("off")
        if h >= heads:
            continue
        shown = masks[h].astype(np.float32) if masks is not None else maps[h]
        ax.imshow(image)
        ax.imshow(_upsample(shown, image.shape[:2]), cmap="inferno", alpha=0.6)
        ax.set_title(f"head {h}", fontsize=8)
    fig.suptitle(title or "Last-block attention of the CLS token per head")
    return fig


def position_similarity(sim: np.ndarray, grid) -> Figure:
    """ViT paper Fig. 7 (centre): for each patch, its embedding's cosine similarity to all others,
    shown as a (gh, gw) tile at the patch's place. sim: (N, N), N = gh * gw."""
    gh, gw = grid
    tiles = sim.reshape(gh, gw, gh, gw)  # (row, col, row', col')
    mosaic = np.full((gh * (gh + 1), gw * (gw + 1)), np.nan, np.float32)
    for r in range(gh):
        for c in range(gw):
            mosaic[r * (gh + 1):r * (gh + 1) + gh, c * (gw + 1):c * (gw + 1) + gw] = tiles[r, c]
    fig = Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1)
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine similarity")
    ax.set_title("Position embedding similarity")
    return fig


def projection_filters(filters: np.ndarray, max_filters: int = 64) -> Figure:
    """The first patch-embedding filters as RGB images. filters: (D, P, P, 3) in [0, 1]."""
    k = min(len(filters), max_filters)
    rows, cols = _grid(k, 16)
    fig = Figure(figsize=(cols * 0.7, rows * 0.75 + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < k:
            ax.imshow(filters[i])
    fig.suptitle(f"Patch-embedding filters (first {k} of {len(filters)})")
    return fig


def cls_trajectory(cos: np.ndarray, names) -> Figure:
    """Cosine similarity of the CLS token after each step to its final state. cos: (B, L)."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(cos.shape[1])
    for row, name in zip(cos, names):
        ax.plot(steps, row, marker="o", ms=3, label=str(name))
    ax.set_xlabel("step (0 = embeddings, i = after block i)")
    ax.set_ylabel("cosine similarity to final CLS")
    ax.set_xticks(steps)
    ax.grid(alpha=0.3)
    if len(names) <= 12:
        ax.legend(fontsize=7)
    ax.set_title("CLS token through the blocks")
    return fig


def cka_matrix(matrix: np.ndarray, title: str = "") -> Figure:
    """Layer-by-layer CKA heat map. matrix: (layers, layers)."""
    fig = Figure(figsize=(5.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="magma", vmin=0, vmax=1, origin="lower")
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("layer (0 = embeddings)")
    fig.colorbar(im, ax=ax, label="CKA")
    ax.set_title(title or "CKA between layers")
    return fig
