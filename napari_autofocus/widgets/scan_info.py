"""Scan info: the geometry napari uses for the selected layer, to check that volumes line up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QLabel, QWidget

from napari_autofocus._reader import prefer_this_reader
from napari_autofocus.io.nifti import NiftiGeometry
from napari_autofocus.widgets import _common


def describe_layer(layer) -> str:
    """Plain-text description of a layer's grid: shape, spacing, origin, orientation, intensities."""
    if layer is None:
        return "No layer selected."
    data = np.asarray(layer.data) if not hasattr(layer.data, "levels") else np.asarray(layer.data[0])
    lines = [
        f"<b>{layer.name}</b> ({layer.__class__.__name__.lower()})",
        f"shape (S, P, L): {' x '.join(str(s) for s in data.shape)}",
        f"voxel size (mm): {' x '.join(f'{s:g}' for s in layer.scale)}",
        f"origin (mm): {', '.join(f'{t:.1f}' for t in layer.translate)}",
    ]
    geometry = layer.metadata.get("nifti") if isinstance(layer.metadata, dict) else None
    if isinstance(geometry, NiftiGeometry):
        lines.append(f"stored orientation: {''.join(geometry.source_axcodes)}, shown as S-P-L (radiological)")
        if geometry.path:
            lines.append(f"file: {Path(geometry.path).name}")
    if layer.metadata.get("channel_name"):
        lines.append(f"channel: {layer.metadata['channel_name']}")
    if data.size:
        if np.issubdtype(data.dtype, np.integer) and layer.__class__.__name__ == "Labels":
            values, counts = np.unique(data, return_counts=True)
            shown = ", ".join(f"{v}: {c}" for v, c in zip(values[:8], counts[:8], strict=False))
            lines.append(f"label voxels: {shown}")
        else:
            lines.append(f"intensity: min {data.min():.4g}, mean {data.mean():.4g}, max {data.max():.4g}")
    return "<br>".join(lines)


class ScanInfoWidget(QWidget):
    """Shows the active layer's grid; updates when the selection changes."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        prefer_this_reader()
        self.label = QLabel()
        self.label.setWordWrap(True)
        layout = _common.scroll_body(self)
        layout.addWidget(self.label)
        layout.addStretch(1)
        napari_viewer.layers.selection.events.active.connect(self._refresh)
        self._refresh()

    def _refresh(self, event=None) -> None:
        self.label.setText(describe_layer(self.viewer.layers.selection.active))
