"""Figures of the analyses, as matplotlib Figures built from arrays (no pyplot state).

Every function takes numpy arrays (the numbers in metrics.json) and draws exactly those numbers,
so a figure can be checked on its data. Single-model drawers take `fig`, a Figure or a SubFigure
to draw into; `side_by_side` gives one SubFigure per model, so several models share one figure.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle as _Rectangle
from matplotlib.ticker import FuncFormatter, NullFormatter

from . import tips


def _grid(n: int, max_cols: int) -> tuple[int, int]:
    cols = max(1, min(n, max_cols))
    return math.ceil(n / cols), cols


def side_by_side(count: int, width: float, height: float, title: str = ""):
    """A figure with one SubFigure per model, left to right: (figure, [subfigures])."""
    fig = Figure(figsize=(width * count, height), layout="constrained")
    subs = fig.subfigures(1, count, squeeze=False)[0] if count > 1 else [fig]
    if title:
        suptitle(fig, title)
    return fig, list(subs)


def suptitle(fig, text: str, fontsize: float = 12) -> None:
    """A figure's title, wrapped to the figure's width: a long title is never cut at its ends."""
    import textwrap

    width = fig.get_figwidth() if hasattr(fig, "get_figwidth") else fig.figure.get_figwidth()
    if fig is not getattr(fig, "figure", fig):  # a subfigure: its share of the figure
        width *= fig.bbox.width / fig.figure.bbox.width
    chars = max(12, int(width * 72 / (0.6 * fontsize)))  # an average glyph is about 0.6 em wide
    fig.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


# Images are drawn at most this many pixels on their longer side: a panel is about 2 inches
# wide, and a 1024 px image with its upsampled map would otherwise be held (as float RGBA) for
# every panel while a figure renders: 0.9 GB for the sample figure of 4 images at 1024 px.
DISPLAY_PIXELS = 384


def _shown(image: np.ndarray) -> np.ndarray:
    """The image as drawn: reduced (area averaging) when its longer side exceeds DISPLAY_PIXELS."""
    h, w = image.shape[:2]
    if max(h, w) <= DISPLAY_PIXELS:
        return image
    import cv2

    f = DISPLAY_PIXELS / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return cv2.resize(np.asarray(image, np.float32), size, interpolation=cv2.INTER_AREA)


def _upsample(m: np.ndarray, shape) -> np.ndarray:
    import cv2

    return cv2.resize(np.asarray(m, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def mean_attention_distance(
    mean: np.ndarray, std: np.ndarray | None = None, title: str = "", fig=None, ylim=None
):
    """ViT paper Fig. 7 (left): one dot per head, blocks along x. mean, std: (blocks, heads)."""
    blocks, heads = mean.shape
    fig = fig if fig is not None else Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    xs = np.repeat(np.arange(blocks), heads)
    ax.scatter(xs, mean.reshape(-1), c=np.tile(np.arange(heads), blocks), cmap="tab20", s=18)
    if std is not None:
        ax.errorbar(xs, mean.reshape(-1), yerr=std.reshape(-1), fmt="none", ecolor="0.7", lw=0.6, zorder=0)
    ax.set_xlabel("block (network depth)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_xticks(range(blocks), [str(b + 1) for b in range(blocks)])
    for b in range(blocks):
        per_head = "; ".join(
            f"head {h + 1}: {_num(mean[b, h], 1)}" + (f" ± {_num(std[b, h], 1)}" if std is not None else "")
            for h in range(heads)
        )
        tips.column(ax, b, f"block {b + 1}: mean over heads {_num(np.nanmean(mean[b]), 1)} px; {per_head}")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title or "Mean attention distance per head")
    ax.grid(alpha=0.3)
    return fig


def sample_overlays(images, rollouts, heats, row_titles, labels, relevances=None, extras=()) -> Figure:
    """Sample images, one row each; per model two columns: its attention rollout and its
    last-block CLS attention (mean over heads), each over the image as that model saw it, and a
    third with the class-specific relevance of its top class when relevances are given.
    images[m] (S, Y, X, 3) in [0, 1]; rollouts[m], heats[m], relevances[m] (S, I, J)
    (a model's relevances all NaN: it has no head, shown empty); row_titles[s][m]. extras:
    (title, maps per model) for more columns after the relevance (gradient x input, ...)."""
    models, count = len(labels), len(images[0])
    panels = [[(rollouts[m], "rollout"), (heats[m], "CLS attention")] for m in range(models)]
    if relevances is not None:
        for m in range(models):
            panels[m].append((relevances[m], "relevance (top class)"))
    for what, per_model in extras:
        for m in range(models):
            panels[m].append((per_model[m], what))
    per = len(panels[0])
    fig = Figure(figsize=(1.95 * per * models, 2.0 * count + 0.5), layout="constrained")
    axes = fig.subplots(count, per * models, squeeze=False)
    for m in range(models):
        for s in range(count):
            image = _shown(images[m][s])
            for c, (maps, what) in enumerate(panels[m]):
                ax = axes[s, per * m + c]
                ax.axis("off")
                ax.imshow(image)
                ax.set_title(f"{short(labels[m])}: {what}\n{short(row_titles[s][m], 40)}", fontsize=7)
                if not np.isfinite(maps[s]).any():  # a model without a head has no class to explain
                    continue
                shown = np.clip(maps[s], 0, None) / max(float(np.nanmax(maps[s])), 1e-12)  # positive part
                ax.imshow(_upsample(shown, image.shape[:2]), cmap="inferno", alpha=0.6)
    what = "attention rollout (Abnar & Zuidema 2020) and last-block CLS attention"
    if relevances is not None:
        what += "; relevance for the top class (Chefer et al. 2021)"
    suptitle(fig, f"Sample images: {what}")
    return fig


def attention_heatmaps(
    image: np.ndarray, maps: np.ndarray, masks: np.ndarray | None = None, title: str = "", fig=None
):
    """Last block, CLS to patches, one panel per head. maps (H, I, J); masks likewise."""
    heads = maps.shape[0]
    rows, cols = _grid(heads, 6)
    fig = fig if fig is not None else Figure(figsize=(2.2 * cols, 2.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    image = _shown(image)
    for h, ax in enumerate(axes):
        ax.axis("off")
        if h >= heads:
            continue
        shown = masks[h].astype(np.float32) if masks is not None else maps[h]
        ax.imshow(image)
        ax.imshow(_upsample(shown, image.shape[:2]), cmap="inferno", alpha=0.6)
        ax.set_title(f"head {h}", fontsize=8)
    suptitle(fig, title or "Last-block attention of the CLS token per head")
    return fig


def mean_map(m: np.ndarray, title: str = "", fig=None):
    """An (I, J) map averaged over all images, on the patch grid."""
    fig = fig if fig is not None else Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="inferno")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title or "Mean over all images")
    return fig


def position_similarity(sim: np.ndarray, grid, fig=None, title: str = "", patches=None):
    """ViT paper Fig. 7 (centre): for each patch, its embedding's cosine similarity to all others,
    shown as an (I, J) tile at the patch's place. sim: (K, N), N = I * J, row k for patch
    patches[k] (row-major indices on a lattice of rows and columns; None: every patch, K = N)."""
    gh, gw = grid
    patches = np.arange(gh * gw) if patches is None else np.asarray(patches)
    rows, cols = np.unique(patches // gw), np.unique(patches % gw)
    mosaic = np.full((len(rows) * (gh + 1), len(cols) * (gw + 1)), np.nan, np.float32)
    for k, p in enumerate(patches):
        r, c = np.searchsorted(rows, p // gw), np.searchsorted(cols, p % gw)
        mosaic[r * (gh + 1) : r * (gh + 1) + gh, c * (gw + 1) : c * (gw + 1) + gw] = sim[k].reshape(gh, gw)
    fig = fig if fig is not None else Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(mosaic, cmap="viridis", vmin=-1, vmax=1)
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.7, label="cosine similarity")
    ax.set_title(title or "Position embedding similarity")
    return fig


def filter_mosaic(filters: np.ndarray, cols: int = 8) -> np.ndarray:
    """(k, P, P, 3) filters -> one (rows * (P + 1) - 1, cols * (P + 1) - 1, 3) image, filter i at
    tile (i // cols, i % cols), tiles one white pixel apart."""
    k, p = len(filters), filters.shape[1]
    rows, cols = _grid(k, cols)
    mosaic = np.ones((rows * (p + 1) - 1, cols * (p + 1) - 1, 3), np.float32)
    for i in range(k):
        r, c = divmod(i, cols)
        mosaic[r * (p + 1) : r * (p + 1) + p, c * (p + 1) : c * (p + 1) + p] = filters[i]
    return mosaic


def projection_filters(filters: np.ndarray, max_filters: int = 64, fig=None, title: str = ""):
    """The first patch-embedding filters as RGB images, in one mosaic (one axes: fast to draw).
    filters: (D, P, P, 3) in [0, 1]."""
    k = min(len(filters), max_filters)
    fig = fig if fig is not None else Figure(figsize=(6, 6), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(filter_mosaic(filters[:k]), interpolation="nearest")
    ax.axis("off")
    ax.set_title(title or f"Patch-embedding filters (first {k} of {len(filters)})")
    return fig


def cls_trajectory(cos: np.ndarray, names, fig=None, mean=None, std=None, title: str = ""):
    """Cosine similarity of the CLS token after each step to its final state: one line per
    sample image, cos (S, L + 1); with mean and std (L + 1,), their band over all images."""
    fig = fig if fig is not None else Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    steps = np.arange(cos.shape[1] if len(cos) else len(mean))
    if mean is not None:
        ax.fill_between(steps, mean - std, mean + std, color="0.85", label="all images: mean ± std")
        ax.plot(steps, mean, color="k", lw=2, label="all images: mean")
    for row, name in zip(cos, names):
        ax.plot(steps, row, marker="o", ms=3, lw=1, label=str(name))
    ax.set_xlabel("step (0 = embeddings, i = after block i)")
    ax.set_ylabel("cosine similarity to final CLS")
    ax.set_xticks(steps)
    for i in steps:
        parts = [f"all images {_num(mean[i], 3)} ± {_num(std[i], 3)}"] if mean is not None else []
        parts += [f"{name}: {_num(row[i], 3)}" for row, name in zip(cos, names)]
        tips.column(ax, i, f"{_step(i)}: " + "; ".join(parts))
    ax.grid(alpha=0.3)
    if len(names) <= 12:
        ax.legend(fontsize=7)
    ax.set_title(title or "CLS token through the blocks")
    return fig


def token_mass(mean: np.ndarray, std: np.ndarray, groups, fig=None, title: str = ""):
    """The share of attention each kind of token receives per block: mean and std (L, G) over
    all images, one line per group (class tokens, registers, patches)."""
    fig = fig if fig is not None else Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    blocks = np.arange(1, len(mean) + 1)
    for g, name in enumerate(groups):
        ax.plot(blocks, mean[:, g], marker="o", ms=3, label=name)
        ax.fill_between(blocks, mean[:, g] - std[:, g], mean[:, g] + std[:, g], alpha=0.2)
    ax.set_xlabel("block")
    ax.set_ylabel("share of the attention received")
    ax.set_ylim(0, 1)
    ax.set_xticks(blocks)
    for i, b in enumerate(blocks):
        shares = "; ".join(
            f"{name} {_percent(mean[i, g])} ± {_percent(std[i, g])}" for g, name in enumerate(groups)
        )
        tips.column(ax, b, f"block {b}: {shares}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Attention by token group")
    return fig


def cka_matrix(
    matrix: np.ndarray,
    title: str = "",
    fig=None,
    xlabel: str = "layer (0 = embeddings)",
    ylabel: str = "layer (0 = embeddings)",
):
    """CKA heat map between layers. matrix: (layers_y, layers_x)."""
    fig = fig if fig is not None else Figure(figsize=(5.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="magma", vmin=0, vmax=1, origin="lower")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, label="CKA")
    ny, nx = np.shape(matrix)
    for i in range(ny):
        for j in range(nx):
            tips.cell(
                ax,
                j - 0.5,
                i - 0.5,
                j + 0.5,
                i + 0.5,
                f"{_layer(ylabel, i)} and {_layer(xlabel, j)}: CKA {_num(matrix[i][j], 3)}",
            )
    ax.set_title(title or "CKA between layers")
    return fig


def token_norms(summary: dict, fig=None, title: str = ""):
    """Token norms per step (0 = embeddings, i = after block i), per kind of token: the median
    (line), the 1st to 99th percentile (band) and the maximum (dots), over all images, on a log
    scale; the outlier threshold as a dashed line. summary: metrics.json's "token_norms"."""
    fig = fig if fig is not None else Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    count = np.asarray(summary["count"])
    steps = np.arange(count.shape[0])
    for g, name in enumerate(summary["groups"]):
        if not count[:, g].any():  # no registers, say
            continue
        p50 = np.asarray(summary["p50"])[:, g]
        (line,) = ax.plot(steps, p50, marker="o", ms=3, label=f"{name}: median")
        ax.fill_between(
            steps,
            np.asarray(summary["p1"])[:, g],
            np.asarray(summary["p99"])[:, g],
            alpha=0.2,
            color=line.get_color(),
        )
        ax.plot(
            steps, np.asarray(summary["max"])[:, g], "^", ms=4, color=line.get_color(), label=f"{name}: max"
        )
    ax.axhline(
        summary["threshold"], ls="--", color="0.3", lw=1, label=f"threshold {summary['threshold']:.3g}"
    )
    ax.set_yscale("log")
    # plain numbers: the report draws text without mathtext (names from outside are not parsed)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("step (0 = embeddings, i = after block i)")
    ax.set_ylabel("token L2 norm")
    ax.set_xticks(steps)
    for i in steps:
        parts = [
            f"{name}: median {_num(summary['p50'][i][g], 3)}, 1-99 % {_num(summary['p1'][i][g], 3)} to "
            f"{_num(summary['p99'][i][g], 3)}, max {_num(summary['max'][i][g], 3)}"
            for g, name in enumerate(summary["groups"])
            if count[i, g]
        ]
        tips.column(ax, i, f"{_step(i)}: " + "; ".join(parts))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or "Token norms")
    return fig


def high_norm_patches(images, maps, threshold: float, names, fig=None, title: str = ""):
    """Each sample image with its last block's patch-token norms over it and the patches above
    threshold outlined. images (S, Y, X, 3) in [0, 1]; maps (S, I, J)."""
    count = len(images)
    rows, cols = _grid(count, 4)
    fig = fig if fig is not None else Figure(figsize=(2.2 * cols, 2.3 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes:
        ax.axis("off")
    for s in range(count):
        image, m = _shown(images[s]), maps[s]
        ax = axes[s]
        ax.imshow(image)
        ax.imshow(_upsample(m / max(float(m.max()), 1e-12), image.shape[:2]), cmap="viridis", alpha=0.55)
        sy, sx = image.shape[0] / m.shape[0], image.shape[1] / m.shape[1]
        hits = np.argwhere(m > threshold)
        for i, j in hits:
            ax.add_patch(
                _Rectangle((j * sx - 0.5, i * sy - 0.5), sx, sy, fill=False, edgecolor="red", lw=1.2)
            )
        ax.set_title(f"{short(names[s])}\n{len(hits)} above {threshold:.3g}", fontsize=7)
    suptitle(fig, title or "High-norm patch tokens, last block")
    return fig


def logit_lens(summary: dict, fig=None, title: str = ""):
    """Per step (0 = embeddings, i = after block i), each read by the final norm and head:
    the share of images whose top-1 class is already the final one and the mean probability of
    the final class (bands: one standard deviation); without a head, the cosine of the features
    to the final ones. summary: metrics.json's "logit_lens"."""
    fig = fig if fig is not None else Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.add_subplot()
    keys = [k for k in ("top1_agreement", "final_class_probability", "cosine_to_final") if k in summary]
    for key in keys:
        mean, std = np.asarray(summary[key]["mean"]), np.asarray(summary[key]["std"])
        steps = np.arange(len(mean))
        ax.plot(steps, mean, marker="o", ms=3, label=key.replace("_", " "))
        ax.fill_between(steps, np.clip(mean - std, -1, 1), np.clip(mean + std, -1, 1), alpha=0.2)
        ax.set_xticks(steps)
    ax.set_xlabel("step (0 = embeddings, i = after block i)")
    ax.set_ylim(-0.05 if "cosine_to_final" in summary else 0, 1.05)
    for i in range(len(summary[keys[0]]["mean"])):
        parts = [
            f"{key.replace('_', ' ')} {_num(summary[key]['mean'][i], 3)} ± {_num(summary[key]['std'][i], 3)}"
            for key in keys
        ]
        tips.column(ax, i, f"{_step(i)}: " + "; ".join(parts))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "Logit lens")
    return fig


def pca_maps(images, samples, names, ratio, fig=None, title: str = ""):
    """Per sample image (a row): the image, its first three principal components as RGB, and
    its foreground coloured by the second PCA. images (S, Y, X, 3) in [0, 1]; samples: each
    image's metrics.json entry ("pca_rgb", "foreground_rgb" (I, J, 3)); ratio: the data-set
    PCA's explained-variance shares."""
    count = len(images)
    fig = fig if fig is not None else Figure(figsize=(6, 1.9 * count + 0.6), layout="constrained")
    axes = fig.subplots(count, 3, squeeze=False)
    share = float(np.sum(np.asarray(ratio, np.float64)[:3]))
    for s in range(count):
        image = _shown(images[s])
        panels = (
            (image, short(names[s])),
            (_upsample_rgb(np.asarray(samples[s]["pca_rgb"], np.float64), image.shape[:2]), "PCA 1-3"),
            (
                _upsample_rgb(np.asarray(samples[s]["foreground_rgb"], np.float64), image.shape[:2]),
                "foreground",
            ),
        )
        for ax, (picture, what) in zip(axes[s], panels):
            ax.imshow(picture, interpolation="nearest")
            ax.axis("off")
            ax.set_title(what, fontsize=7)
    suptitle(fig, f"{title}: PCA of patch features (first three: {100 * share:.0f} % of the variance)")
    return fig


def _upsample_rgb(m: np.ndarray, shape) -> np.ndarray:
    """(I, J, 3) -> (Y, X, 3) by repeating each patch (nearest)."""
    ry, rx = -(-shape[0] // m.shape[0]), -(-shape[1] // m.shape[1])
    return np.clip(np.repeat(np.repeat(m, ry, axis=0), rx, axis=1)[: shape[0], : shape[1]], 0, 1)


def faithfulness(summary: dict, fig=None, title: str = ""):
    """Deletion and insertion curves (mean over the sample images) of each map, with their
    areas in the legend. summary: metrics.json's "faithfulness" of one model."""
    fig = fig if fig is not None else Figure(figsize=(9, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, curve in zip(axes, ("deletion", "insertion")):
        for name, m in summary["maps"].items():
            y = np.asarray(m[curve], np.float64)
            style = {"color": "0.4", "ls": "--"} if name == "random" else {}
            ax.plot(np.linspace(0, 1, len(y)), y, label=f"{name} ({m[curve + '_auc']:.3f})", **style)
        ax.set_xlabel("fraction of patches " + ("removed" if curve == "deletion" else "inserted"))
        ax.set_ylabel("probability of the top class")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, title="area", title_fontsize=7)
        ax.set_title(f"{curve} ({'lower' if curve == 'deletion' else 'higher'} is better)", fontsize=9)
    suptitle(fig, f"{title}: faithfulness over {summary['images']} sample images, {summary['steps']} steps")
    for ax, curve in zip(axes, ("deletion", "insertion")):
        n = len(next(iter(summary["maps"].values()))[curve])
        for i in range(n):
            values = "; ".join(f"{name} {_num(m[curve][i], 3)}" for name, m in summary["maps"].items())
            tips.column(
                ax, i / (n - 1), f"{curve}, {100 * i / (n - 1):.0f} % of the patches: {values}", 0.5 / (n - 1)
            )
    return fig


def short(text: str, chars: int = 28) -> str:
    """A name for a panel's title, shortened in the middle to fit over a 2-inch panel (the
    report's tables give it whole)."""
    text = str(text)
    return text if len(text) <= chars else text[: chars // 2 - 1] + "…" + text[-(chars - chars // 2) :]


def _num(v, digits: int) -> str:
    """A value for a tooltip: n/a for a missing or non-finite one."""
    return f"{v:.{digits}f}" if v is not None and np.isfinite(v) else "n/a"


def _percent(v) -> str:
    return f"{100 * v:.1f} %" if v is not None and np.isfinite(v) else "n/a"


def _step(i: int) -> str:
    return "embeddings" if i == 0 else f"after block {i}"


def _layer(axis_label: str, i: int) -> str:
    """'A layer (0 = embeddings)' and 3 -> 'A block 3'; 0 -> 'A embeddings'."""
    who = axis_label.split(" layer")[0] if " layer" in axis_label else ""
    return f"{who} {'embeddings' if i == 0 else f'block {i}'}".strip()
