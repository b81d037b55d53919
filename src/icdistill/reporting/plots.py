"""The one renderer of line plots, as PNG bytes: a grid of line panels (losses, AP vs iteration,
PR curves) for the report pages and a run's ``viz/training_curves.png``.

Drawn on matplotlib's Agg canvas (``Figure`` + ``FigureCanvasAgg``, as :mod:`.pictures` does), so
nothing needs a display and a user's pyplot backend is left alone.
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# (x, y) points of one line.
Points = Sequence[tuple[float, float]]
# Panel title -> line label -> points.
Panels = Mapping[str, Mapping[str, Points]]


def panel_grid(
    panels: Panels,
    *,
    xlabel: str,
    ylabel: str = "",
    cols: int = 3,
    unit_square: bool = False,
    hlines: Mapping[str, float] | None = None,
    panel_inches: tuple[float, float] = (4.2, 3.0),
) -> bytes:
    """One panel per entry of ``panels``, one line per label in it; a legend where a panel has
    several lines. ``unit_square`` fixes both axes to [0, 1] (PR curves); ``hlines`` draws
    labelled dashed horizontal lines in every panel (e.g. the teacher's AP). Non-finite
    values leave gaps. Returns the PNG file's bytes."""
    titles = list(panels)
    cols = max(1, min(cols, len(titles) or 1))
    rows = max(1, math.ceil(len(titles) / cols))
    fig = Figure(figsize=(panel_inches[0] * cols, panel_inches[1] * rows), dpi=90)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    # One colour per label across all panels: a run keeps its colour from panel to panel.
    labels = list(dict.fromkeys(label for lines in panels.values() for label in lines))
    palette = colormaps["tab10"]
    for ax, title in zip(axes, titles):
        lines = panels[title]
        for label, pts in lines.items():
            xs = [float(x) for x, _ in pts]
            ys = [float(y) if y is not None and math.isfinite(y) else math.nan for _, y in pts]
            ax.plot(xs, ys, linewidth=1.4, marker="o" if len(xs) <= 12 else None, markersize=3, label=label,
                    color=palette(labels.index(label) % 10))
        for label, value in (hlines or {}).items():
            ax.axhline(value, color="k", linestyle="--", linewidth=1, label=label)
        if unit_square:
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        if ylabel:
            ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.ticklabel_format(axis="y", useOffset=False)  # "1e-5+3.216e-1" offsets read badly
        ax.grid(True, alpha=0.3)
        if len(lines) + len(hlines or {}) > 1:
            ax.legend(fontsize=7)
    for ax in axes[len(titles):]:
        ax.set_axis_off()
    # Fixed margins in inches instead of tight_layout, which draws the figure twice (half the
    # time of a report that every run writes).
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.5 / height, top=1 - 0.35 / height,
                        wspace=0.35, hspace=0.55)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
