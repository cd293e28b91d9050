"""Helpers shared by the dock widgets: notifications, layer lookups, layer menus that stay current."""

from __future__ import annotations

from napari.layers import Image, Labels
from napari.utils import notifications
from qtpy.QtCore import QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFrame,
    QMainWindow,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from napari_autofocus.app.inputs import LayerInfo
from napari_autofocus.app.results import RESULTS
from napari_autofocus.app.session import RESULT_KEY

NONE = "(none)"


# Notifications go through the module attribute so tests can patch napari.utils.notifications.show_*.
def error(message: str) -> None:
    notifications.show_error(message)


def info(message: str) -> None:
    notifications.show_info(message)


def warning(message: str) -> None:
    notifications.show_warning(message)


def image_layers(viewer) -> list[Image]:
    """The scans a model could read: image layers, but not RGB ones nor this plugin's own outputs
    (attention maps, probabilities, Compare's views of the scan), which carry its tag."""
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, Image) and not layer.rgb and "autofocus" not in (layer.metadata or {})
    ]


def layer_info(layer) -> LayerInfo:
    return LayerInfo(layer.name, tuple(layer.data.shape), layer.metadata.get("channel_name"))


def result_layers(viewer) -> list[Labels]:
    """Labels layers that carry a segmentation result (newest last)."""
    return [layer for layer in viewer.layers if isinstance(layer, Labels) and RESULTS.of(layer) is not None]


def truth_layers(viewer) -> list[Labels]:
    """Labels layers that are not outputs of this plugin; ground-truth-marked ones first."""
    layers = [
        layer
        for layer in viewer.layers
        if isinstance(layer, Labels)
        and "autofocus" not in layer.metadata
        and RESULT_KEY not in layer.metadata
    ]
    return sorted(layers, key=lambda layer: layer.metadata.get("role") != "ground truth")


def set_items(
    combo: QComboBox, items: list[str], keep: str | None = None, default: str | None = None
) -> None:
    """Replace a combo's items without emitting for each one; keep the current choice when possible."""
    current = keep if keep is not None else combo.currentText()
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if current in items:
        combo.setCurrentText(current)
    elif default in items:
        combo.setCurrentText(default)
    combo.blockSignals(False)
    if combo.currentText() != current:
        combo.currentTextChanged.emit(combo.currentText())


class _DockScrollArea(QScrollArea):
    """Scrolls vertically only, and asks for its content's natural width (a dock opens as wide as
    its controls need) but only a little height (a dock never pushes the window off the screen)."""

    def sizeHint(self) -> QSize:
        inner = self.widget().sizeHint() if self.widget() is not None else QSize(0, 0)
        return QSize(inner.width() + self.verticalScrollBar().sizeHint().width(), min(inner.height(), 600))

    def minimumSizeHint(self) -> QSize:
        inner = self.widget().minimumSizeHint() if self.widget() is not None else QSize(0, 0)
        return QSize(inner.width() + self.verticalScrollBar().sizeHint().width(), 120)


def scroll_body(widget) -> QVBoxLayout:
    """The layout to fill a dock widget with, inside a scroll area: a tall dock scrolls instead of
    squeezing its controls or stretching the window past the screen (usable at 1280x800)."""
    content = QWidget()
    scroll = _DockScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setWidget(content)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    widget.scroll_area = scroll
    QTimer.singleShot(0, lambda: dock_as_tab(widget))  # once napari has put it in its dock
    return QVBoxLayout(content)


def dock_as_tab(widget) -> None:
    """Put ``widget``'s dock in a tab beside this plugin's other docks in the same area, in front:
    stacked, each gets a fraction of the height and the explorer's charts fall below the fold."""
    try:
        dock = widget.parentWidget()
    except RuntimeError:  # closed before napari docked it
        return
    window = dock.parentWidget() if isinstance(dock, QDockWidget) else None
    if not isinstance(window, QMainWindow) or dock.isFloating() or window.tabifiedDockWidgets(dock):
        return
    area = window.dockWidgetArea(dock)
    for other in window.findChildren(QDockWidget):
        content = other.widget()
        ours = content is not None and type(content).__module__.startswith("napari_autofocus.")
        if other is dock or not ours or other.isFloating() or not other.isVisible():
            continue
        if window.dockWidgetArea(other) == area:
            window.tabifyDockWidget(other, dock)
            dock.show()
            dock.raise_()
            return


def watch_layers(viewer, callback) -> None:
    """Call ``callback`` whenever layers are added, removed or renamed."""
    viewer.layers.events.inserted.connect(callback)
    viewer.layers.events.removed.connect(callback)
    viewer.layers.events.reordered.connect(callback)
    viewer.layers.events.renamed.connect(callback)
