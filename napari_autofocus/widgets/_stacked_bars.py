"""A stacked-bar chart painted with Qt: the explorer's per-structure chart, redrawn in a few ms.

matplotlib took 0.15-0.3 s to lay out and render three panels of six bars on a busy 2-core
machine, on the GUI thread, every time the user ticked an autofocus layer. This chart has one
job (panels of bars whose segments sum to 1), so QPainter draws it directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter
from qtpy.QtWidgets import QSizePolicy, QWidget

from napari_autofocus.analysis.explorer_maps import rate_hue
from napari_autofocus.widgets._charts import BACKGROUND, FOREGROUND

AXIS = "#888888"


@dataclass(frozen=True)
class Panel:
    """One panel: a title and bars; each bar is a label and its segments, bottom to top."""

    title: str
    bars: tuple[tuple[str, tuple[float, ...]], ...]


class StackedBars(QWidget):
    """Panels side by side, a 0-1 value axis on the left, one legend (segment colours) below."""

    def __init__(self, height: int = 190) -> None:
        super().__init__()
        self.panels: tuple[Panel, ...] = ()
        self.series: tuple[tuple[str, tuple[float, float, float]], ...] = ()  # (name, rgb 0-1)
        self.axis_label = ""
        self.bar_axis_label = ""
        self.text = ""
        self.setMinimumHeight(height)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def show_bars(self, panels, series, axis_label: str = "", bar_axis_label: str = "") -> None:
        self.panels, self.series, self.text = tuple(panels), tuple(series), ""
        self.axis_label, self.bar_axis_label = axis_label, bar_axis_label
        self.update()

    def message(self, text: str) -> None:
        self.panels, self.text = (), text
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        painter.fillRect(self.rect(), QColor(BACKGROUND))
        font = QFont(self.font())
        font.setPointSizeF(7.5)
        painter.setFont(font)
        painter.setPen(QColor(FOREGROUND))
        if not self.panels:
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.text)
            return
        line = painter.fontMetrics().height()
        left, right, top = 3 * line, 6, line + 4
        bottom = 2 * line + 8 + (line if self.bar_axis_label else 0)
        width, height = self.width() - left - right, self.height() - top - bottom
        if width < 20 or height < 20:
            return
        self._value_axis(painter, left, top, height)
        gap = 8
        panel_width = (width - gap * (len(self.panels) - 1)) / len(self.panels)
        for i, panel in enumerate(self.panels):
            x0 = left + i * (panel_width + gap)
            self._panel(painter, panel, QRectF(x0, top, panel_width, height), line)
        self._legend(painter, self.height() - line - 2, line)
        painter.end()

    def _value_axis(self, painter: QPainter, left: float, top: float, height: float) -> None:
        painter.setPen(QColor(AXIS))
        for value in (0.0, 0.5, 1.0):
            y = top + height * (1 - value)
            painter.drawLine(int(left - 3), int(y), int(left), int(y))
            painter.drawText(
                QRectF(0, y - 8, left - 5, 16),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                f"{value:g}",
            )
        if self.axis_label:
            painter.save()
            painter.translate(8, top + height / 2)
            painter.rotate(-90)
            painter.setPen(QColor(FOREGROUND))
            painter.drawText(
                QRectF(-height / 2, -8, height, 16), Qt.AlignmentFlag.AlignCenter, self.axis_label
            )
            painter.restore()

    def _panel(self, painter: QPainter, panel: Panel, box: QRectF, line: int) -> None:
        painter.setPen(QColor(AXIS))
        painter.drawRect(box)
        painter.setPen(QColor(FOREGROUND))
        painter.drawText(
            QRectF(box.left(), box.top() - line - 2, box.width(), line),
            Qt.AlignmentFlag.AlignCenter,
            panel.title,
        )
        n = max(len(panel.bars), 1)
        slot = box.width() / n
        for j, (label, segments) in enumerate(panel.bars):
            x = box.left() + j * slot + 0.15 * slot
            base = box.bottom()
            for k, value in enumerate(segments):
                h = max(0.0, float(value)) * box.height()
                rgb = self.series[k][1] if k < len(self.series) else (0.7, 0.7, 0.7)
                painter.fillRect(QRectF(x, base - h, 0.7 * slot, h), QColor.fromRgbF(*rgb))
                base -= h
            painter.setPen(QColor(FOREGROUND))
            painter.drawText(
                QRectF(box.left() + j * slot, box.bottom() + 2, slot, line),
                Qt.AlignmentFlag.AlignCenter,
                label,
            )
        if self.bar_axis_label:
            painter.drawText(
                QRectF(box.left(), box.bottom() + line + 2, box.width(), line),
                Qt.AlignmentFlag.AlignCenter,
                self.bar_axis_label,
            )

    def _legend(self, painter: QPainter, y: float, line: int) -> None:
        metrics = painter.fontMetrics()
        items = [(name, rgb, metrics.horizontalAdvance(name)) for name, rgb in self.series]
        total = sum(line + 4 + w + 12 for _, _, w in items)
        x = max(0.0, (self.width() - total) / 2)
        for name, rgb, w in items:
            painter.fillRect(QRectF(x, y + 2, line - 4, line - 4), QColor.fromRgbF(*rgb))
            painter.setPen(QColor(FOREGROUND))
            painter.drawText(QRectF(x + line, y, w + 4, line), Qt.AlignmentFlag.AlignVCenter, name)
            x += line + 4 + w + 12


def draw_structure_means(chart: StackedBars, means, rates, class_name) -> None:
    """Mean weight per rate inside each structure: one panel per structure, one stacked bar per
    autofocus layer (a voxel's weights sum to 1, so each bar is the layer's whole mix of rates and
    the panel shows how the mix moves from AF1 to AF6)."""
    layers = [n for n in means if means[n]]
    if not layers:
        chart.message("No labelled voxels to average over.")
        return
    classes = sorted({c for n in layers for c in means[n]})
    k = max(len(rates[n]) for n in layers)
    many = len(layers) > 3 and all(n.startswith("AF") for n in layers)  # numbers on the bars, "AF" once
    panels = [
        Panel(
            class_name(c),
            tuple(
                (n.removeprefix("AF") if many else n, tuple(_mean(means[n].get(c), i) for i in range(k)))
                for n in layers
            ),
        )
        for c in classes
    ]
    first = rates[layers[0]]
    series = [(f"r={first[i]}" if i < len(first) else f"rate {i + 1}", rate_hue(i)) for i in range(k)]
    chart.show_bars(panels, series, "mean weight", "autofocus layer (AF)" if many else "")


def _mean(values, i: int) -> float:
    return float(values[i]) if values is not None and i < len(values) else 0.0
