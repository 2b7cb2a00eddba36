"""Values to read off a figure: rectangles of an axes, each with a text, that the report lays over
the figure's PNG so that hovering (or the arrow keys) shows the numbers behind a cell or a step.

The figures stay plain matplotlib figures (the PNG files beside the page are what papers use);
the plotting functions only note, per axes, which rectangle means what (`cell`, `column`), and
`regions` turns the notes into fractions of the rendered figure once it has been drawn (its
layout decided).
"""

from __future__ import annotations

from matplotlib.axes import Axes

_KEY = "_vitops_tips"


def cell(ax, x0: float, y0: float, x1: float, y1: float, text: str) -> None:
    """A rectangle in data coordinates (a heat-map cell)."""
    ax.__dict__.setdefault(_KEY, []).append(((x0, y0, x1, y1), False, text))


def column(ax, x: float, text: str, half: float = 0.5) -> None:
    """The axes' full height over x ± half in data coordinates (one step of a line chart)."""
    ax.__dict__.setdefault(_KEY, []).append(((x - half, 0.0, x + half, 0.0), True, text))


def regions(fig) -> list[tuple[float, float, float, float, str]]:
    """(left, top, width, height, text) of every noted rectangle, as fractions of the drawn
    figure measured from its top-left corner, clipped to their axes. Call after drawing
    (savefig): the constrained layout places the axes then."""
    width, height = fig.bbox.width, fig.bbox.height
    out = []
    for ax in fig.findobj(Axes):
        box = ax.bbox  # display pixels, origin bottom-left
        for (x0, y0, x1, y1), full_height, text in ax.__dict__.get(_KEY, []):
            (px0, py0), (px1, py1) = ax.transData.transform([(x0, y0), (x1, y1)])
            if full_height:
                py0, py1 = box.y0, box.y1
            left, right = max(min(px0, px1), box.x0), min(max(px0, px1), box.x1)
            bottom, top = max(min(py0, py1), box.y0), min(max(py0, py1), box.y1)
            if right <= left or top <= bottom:
                continue
            out.append(
                (left / width, 1 - top / height, (right - left) / width, (top - bottom) / height, text)
            )
    return out
