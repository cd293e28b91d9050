"""Small matplotlib charts for the dock widgets, styled to read on napari's dark theme."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

from napari_autofocus.analysis.explorer_maps import rate_hue

BACKGROUND = "#262930"
FOREGROUND = "#e6e6e6"


# Fixed margins (fractions of the figure; room below for tick labels and the legend): matplotlib's
# constrained layout measured every text on each redraw and took most of a redraw's 0.2 s.
MARGINS = {"left": 0.14, "right": 0.98, "top": 0.86, "bottom": 0.34, "wspace": 0.1}


class ChartCanvas(FigureCanvasQTAgg):
    """A matplotlib figure that fits in a dock widget."""

    def __init__(self, width: float = 4.0, height: float = 2.2) -> None:
        self.figure = Figure(figsize=(width, height), dpi=90, facecolor=BACKGROUND)
        super().__init__(self.figure)
        self.setMinimumHeight(int(height * 80))

    def axes(self, n: int = 1) -> list:
        self.figure.clear()
        self.figure.subplots_adjust(**MARGINS)
        axes = self.figure.subplots(1, n, squeeze=False, sharey=True)[0]
        for ax in axes:
            style(ax)
        return list(axes)

    def message(self, text: str) -> None:
        ax = self.axes(1)[0]
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center", color=FOREGROUND, wrap=True, fontsize=9)
        self.draw_idle()


def style(ax) -> None:
    ax.set_facecolor(BACKGROUND)
    ax.tick_params(colors=FOREGROUND, labelsize=8)
    for spine in ax.spines.values():
        spine.set_color("#888888")
    ax.title.set_color(FOREGROUND)
    ax.xaxis.label.set_color(FOREGROUND)
    ax.yaxis.label.set_color(FOREGROUND)


def grouped_bars(ax, groups: Sequence[str], series: Sequence[tuple[str, Sequence[float], tuple]]) -> list:
    """Bars for each group, one colour per series (name, values per group, colour)."""
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    containers = [
        ax.bar(x + (i - (n - 1) / 2) * width, values, width, label=name, color=color)
        for i, (name, values, color) in enumerate(series)
    ]
    ax.set_xticks(x, groups)
    return containers


def draw_voxel_weights(canvas: ChartCanvas, readout: Mapping, rates: Mapping[str, Sequence[int]]) -> None:
    """The K weights of every autofocus layer at one voxel.

    The cursor moves from voxel to voxel: while the layers and rates stay the same only the bar
    heights and the title change (a full rebuild of the figure took half a second on a busy machine)."""
    layers = list(readout["weights"])
    key = (tuple(layers), tuple(tuple(rates[n]) for n in layers))
    z, y, x = readout["index"]
    title = f"voxel ({z}, {y}, {x}): zoom {readout['zoom_mm']:.0f} mm"
    k = max(len(rates[name]) for name in layers)
    heights = [
        [float(readout["weights"][n][i]) if i < len(rates[n]) else 0.0 for n in layers] for i in range(k)
    ]
    kept = getattr(canvas, "voxel_bars", None)
    if kept is not None and kept[0] == key and kept[1] in canvas.figure.axes:
        _, ax, containers = kept
        for container, values in zip(containers, heights, strict=True):
            for bar, value in zip(container.patches, values, strict=True):
                bar.set_height(value)
        ax.set_title(title, fontsize=9)
        canvas.draw_idle()
        return
    ax = canvas.axes(1)[0]
    series = []
    for i in range(k):
        label = f"r={rates[layers[0]][i]}" if i < len(rates[layers[0]]) else f"rate {i + 1}"
        series.append((label, heights[i], rate_hue(i)))
    containers = grouped_bars(ax, layers, series)
    ax.set_ylim(0, 1)
    ax.set_ylabel("weight")
    ax.set_title(title, fontsize=9)
    legend_below(canvas, ax, ncols=k)  # a weight of 1 reaches the top: a corner legend would cover it
    canvas.voxel_bars = (key, ax, containers)
    canvas.draw_idle()


# Models get their own muted palette: the bright rate hues mean dilation rates everywhere else.
MODEL_COLORS = (
    (0.55, 0.63, 0.80),
    (0.99, 0.55, 0.38),
    (0.40, 0.76, 0.65),
    (0.91, 0.54, 0.76),
    (0.65, 0.85, 0.33),
    (1.00, 0.85, 0.18),
    (0.90, 0.77, 0.58),
    (0.70, 0.70, 0.70),
)


def draw_dice_bars(canvas: ChartCanvas, table) -> None:
    """Dice per structure, one colour per model (not the rate colours), the legend below the bars."""
    ax = canvas.axes(1)[0]
    series = [
        (model, np.nan_to_num(values, nan=0.0), MODEL_COLORS[i % len(MODEL_COLORS)])
        for i, (model, values) in enumerate(table.rows)
    ]
    grouped_bars(ax, table.columns, series)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    legend_below(canvas, ax, ncols=3)
    canvas.draw_idle()


def legend_below(canvas: ChartCanvas, ax, ncols: int) -> None:
    """One legend for the whole figure, at its foot under the tick labels, where it covers no bar."""
    handles, labels = ax.get_legend_handles_labels()
    leg = canvas.figure.legend(handles, labels, loc="lower center", ncols=ncols, fontsize=7, frameon=False)
    for text in leg.get_texts():
        text.set_color(FOREGROUND)
