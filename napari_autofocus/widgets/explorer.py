"""Attention explorer: the cached attention of a result as colour layers, a voxel readout and charts.

Everything here reads the :class:`~napari_autofocus.app.session.SegmentationResult` stored on a labels
layer; switching layers, rates or maps only changes which napari layers are shown, never re-runs
the network.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from napari.utils.colormaps import Colormap, DirectLabelColormap
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_autofocus._reader import prefer_this_reader
from napari_autofocus.analysis.explorer_maps import (
    argmax_colors,
    blend,
    class_index,
    derived_layer_name,
    derived_map,
    legend_html,
    legend_text,
    rate_hue,
    structure_means,
    voxel_readout,
    weight_layer_name,
    zoom_mm_map,
)
from napari_autofocus.app.session import RESULT_KEY
from napari_autofocus.widgets import _charts, _common, _stacked_bars
from napari_autofocus.widgets._outputs import TAG, placement

OWNER = "explorer"
MAPS = ("blend", "weights", "arg-max rate", "expected rate", "entropy", "zoom")
DEFAULT_MAPS = ("blend",)  # one layer per autofocus layer to start with; the other maps on demand
TIPS = {
    "blend": "Each voxel coloured by the mix of dilation rates its autofocus layer attends to\n"
    "(the legend above says which colour is which rate). Never washes to white.",
    "weights": "One layer per rate: that rate's attention weight, 0 to 1 (a voxel's K weights sum to 1).",
    "arg-max rate": "The rate with the largest weight at each voxel (hover a voxel: its value is the rate).",
    "expected rate": "Sum of weight x rate: how far apart, in voxels, the layer's kernel taps are\n"
    "on average - where the layer 'zooms out' (large) or 'zooms in' (small).",
    "entropy": "0: one rate decides; 1: all rates weigh the same (the layer is undecided).",
    "zoom": "Effective receptive field in mm from all autofocus layers together: how much of the scan\n"
    "the network looks at to label each voxel.",
}
PREDICTED = "predicted labels"
GLYPHS = "colours: " + "bluegreenorangeredvioletcyanyellowpink" + "r=0123456789,"  # the legend's characters


def layer_content(result, kind: str, af: str | None, k: int | None) -> tuple[np.ndarray, dict]:
    """The data of one explorer layer (autofocus layer ``af``, rate index ``k`` for weights) and the
    styling that depends on it (colormap, limits: given, so napari need not scan the data)."""
    if kind == "zoom":
        data = zoom_mm_map(result)
        finite = np.isfinite(data).any()
        limits = (float(np.nanmin(data)), float(np.nanmax(data)) + 1e-3) if finite else (0.0, 1.0)
        return data, {"colormap": "viridis", "contrast_limits": limits}
    a, rates = result.attention[af], result.rates[af]
    if kind == "blend":  # 8-bit RGB: a quarter of the texture, and nothing for napari to rescale
        return (blend(a) * 255 + 0.5).astype(np.uint8), {"contrast_limits": (0, 255)}
    if kind == "weight":
        cmap = Colormap([[0, 0, 0, 1], [*rate_hue(k), 1]], name=f"autofocus-rate-{k}")
        return a[k], {"colormap": cmap, "contrast_limits": (0.0, 1.0)}
    if kind == "arg-max rate":
        return derived_map(a, rates, kind), {"colormap": DirectLabelColormap(color_dict=argmax_colors(rates))}
    data = derived_map(a, rates, kind)
    if kind == "entropy":
        return data, {"colormap": "magma", "contrast_limits": (0.0, 1.0)}
    return data, {"colormap": "viridis", "contrast_limits": (float(min(rates)), float(max(rates)))}


_POOL = None


def _background_pool() -> ThreadPoolExecutor:
    """One worker thread for the explorer's NumPy work (maps, means): NumPy releases the GIL in
    its loops, so the GUI thread keeps painting while a map is computed."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autofocus-explorer")
    return _POOL


def _means_when_indexed(result, labels, classes, af: str, index) -> dict:
    index = index.result() if isinstance(index, Future) else index
    return structure_means(result, labels, classes, [af], index)


class ExplorerWidget(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        prefer_this_reader()
        self.viewer = napari_viewer
        self._last_index = None
        self._shown_result = None  # id of the result the layers were built from
        self._pending: list[list] = []  # layer work left: [result, "add" | "refill", name, spec, future]
        self._selected = None  # the layer the user had selected before the explorer added some
        self._build_timer = QTimer(self)
        self._build_timer.setSingleShot(True)
        self._build_timer.setInterval(10)  # a gap for painting and input between two layers
        self._build_timer.timeout.connect(self._build_next)
        self._chart_timer = QTimer(self)
        self._chart_timer.setSingleShot(True)
        self._chart_timer.setInterval(80)
        self._chart_timer.timeout.connect(self.update_structure_chart)
        self._means_key, self._means = None, {}  # per-structure means kept per autofocus layer
        self._class_index = None  # a future: where each class lies (shared by all layers' means)
        self._means_job = None  # a future: one autofocus layer's means
        self._changing_layers = False  # our own layer changes fire layer events: do not react to them
        self.result_combo = QComboBox()
        self.layer_list = QListWidget()
        self.rate_list = QListWidget()
        for lst in (self.layer_list, self.rate_list):
            lst.setMaximumHeight(90)
        self.map_boxes = {name: QCheckBox(name) for name in MAPS}
        for name, box in self.map_boxes.items():
            box.setChecked(name in DEFAULT_MAPS)
            box.setToolTip(TIPS[name])
        self.layer_list.setToolTip(
            "An autofocus layer runs one 3x3x3 kernel at several dilation rates and weighs the results\n"
            "per voxel (the attention). AF1 is the network's first such layer, AF6 its last."
        )
        self.rate_list.setToolTip(
            "Dilation rate r: the kernel's taps are r voxels apart, so one kernel spans 2r + 1 voxels.\n"
            "Small rates look closely ('zoom in'), large rates take in context ('zoom out')."
        )
        self.result_combo.setToolTip("The segmentation whose attention is shown (made by Segment).")
        self.legend = QLabel()
        self.legend.setWordWrap(True)
        self.legend.setToolTip(
            "Which colour stands for which dilation rate, in every explorer layer and chart"
        )
        self.classes_combo = QComboBox()
        self.classes_combo.setToolTip(
            "The labels that define the structures of the chart below: the prediction or a ground truth."
        )
        self.readout = QLabel("Move the mouse over the image for the weights under the cursor.")
        self.readout.setWordWrap(True)
        self.voxel_chart = _charts.ChartCanvas(4.0, 2.0)
        self.structure_chart = _stacked_bars.StackedBars()
        self._build_layout()

        self.result_combo.currentTextChanged.connect(self._on_result)
        self.layer_list.itemChanged.connect(self.update_view)
        self.rate_list.itemChanged.connect(self.update_view)
        for box in self.map_boxes.values():
            box.toggled.connect(self.update_view)
        self.classes_combo.currentTextChanged.connect(self._on_classes)
        # layer events come in bursts (a re-run removes its old labels and adds the new ones): look
        # once the burst is over, so a re-run refills the explorer's layers instead of dropping them
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh)
        _common.watch_layers(napari_viewer, lambda *_: self._refresh_timer.start())
        # the cursor fires for every voxel it crosses: redraw the chart once it pauses (80 ms)
        self._cursor_timer = QTimer(self)
        self._cursor_timer.setSingleShot(True)
        self._cursor_timer.setInterval(80)
        self._cursor_timer.timeout.connect(self._on_cursor)
        napari_viewer.cursor.events.position.connect(lambda *_: self._cursor_timer.start())
        self.refresh()
        QTimer.singleShot(0, self._prepare_canvas_legend)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("result", self.result_combo)
        choose = QGridLayout()
        choose.addWidget(QLabel("autofocus layers"), 0, 0)
        choose.addWidget(QLabel("dilation rates"), 0, 1)
        choose.addWidget(self.layer_list, 1, 0)
        choose.addWidget(self.rate_list, 1, 1)
        form.addRow("colours", self.legend)
        maps = QGroupBox("maps")
        grid = QGridLayout(maps)
        for i, box in enumerate(self.map_boxes.values()):
            grid.addWidget(box, i // 3, i % 3)
        readout = QGroupBox("under the cursor")
        QVBoxLayout(readout).addWidget(self.voxel_chart)
        readout.layout().addWidget(self.readout)
        structures = QGroupBox("mean attention per structure")
        s = QVBoxLayout(structures)
        classes = QFormLayout()
        classes.addRow("classes from", self.classes_combo)
        s.addLayout(classes)
        s.addWidget(self.structure_chart)
        layout = _common.scroll_body(self)
        layout.addLayout(form)
        layout.addLayout(choose)
        layout.addWidget(maps)
        layout.addWidget(readout)
        layout.addWidget(structures)
        layout.addStretch(1)  # spare height goes below the controls, not between them

    # -- choices ---------------------------------------------------------------------------------
    @property
    def source_layer(self):
        name = self.result_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401 (no .get)

    @property
    def result(self):
        layer = self.source_layer
        return layer.metadata.get(RESULT_KEY) if layer is not None else None

    def refresh(self, *_) -> None:
        """Follow the viewer's result layers (runs once after each burst of layer events)."""
        if self._changing_layers:
            return
        names = [layer.name for layer in _common.result_layers(self.viewer)]
        default = names[-1] if names else None
        _common.set_items(self.result_combo, names, default=default)
        truth = [PREDICTED] + [layer.name for layer in _common.truth_layers(self.viewer)]
        _common.set_items(self.classes_combo, truth)
        if not names:
            self._clear_layers()
            self.structure_chart.message("Run Segment first: the explorer shows its attention.")
        elif id(self.result) != self._shown_result:  # same name, new result (a re-run)
            self._on_result()

    def _on_result(self, *_) -> None:
        result = self.result
        self._shown_result = id(result)
        self._fill_list(self.layer_list, list(result.attention) if result else [], checked={0})
        rates = sorted({r for rs in (result.rates.values() if result else []) for r in rs})
        self._fill_list(self.rate_list, [str(r) for r in rates], checked=None)
        self._last_index = None
        self.update_view()

    def _fill_list(self, widget: QListWidget, names: list[str], checked) -> None:
        """New items; the user's ticks stay when the names are the same (a re-run of one model)."""
        if [widget.item(i).text() for i in range(widget.count())] == names:
            return
        widget.blockSignals(True)
        widget.clear()
        for i, name in enumerate(names):
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = checked is None or i in checked
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            widget.addItem(item)
        widget.blockSignals(False)

    def set_checked(self, widget: QListWidget, names) -> None:
        """Check exactly ``names`` (used by tests and scripts)."""
        widget.blockSignals(True)
        for i in range(widget.count()):
            item = widget.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)
        widget.blockSignals(False)
        self.update_view()

    @staticmethod
    def checked(widget: QListWidget) -> list[str]:
        return [
            widget.item(i).text()
            for i in range(widget.count())
            if widget.item(i).checkState() == Qt.CheckState.Checked
        ]

    # -- layers ----------------------------------------------------------------------------------
    def wanted_layers(self) -> dict[str, tuple[str, str | None, int | None]]:
        """Layer name -> (kind, autofocus layer, rate index) for the current choices."""
        result = self.result
        if result is None:
            return {}
        rates = {int(r) for r in self.checked(self.rate_list)}
        maps = {name for name, box in self.map_boxes.items() if box.isChecked()}
        wanted = {}
        for af in self.checked(self.layer_list):
            if "blend" in maps:
                wanted[derived_layer_name(af, "blend")] = ("blend", af, None)
            if "weights" in maps:
                for k, r in enumerate(result.rates[af]):
                    if r in rates:
                        wanted[weight_layer_name(af, r)] = ("weight", af, k)
            for kind in ("arg-max rate", "expected rate", "entropy"):
                if kind in maps:
                    wanted[derived_layer_name(af, kind)] = (kind, af, None)
        if "zoom" in maps and result.attention:
            wanted[derived_layer_name("all", "zoom (mm)")] = ("zoom", None, None)
        return wanted

    def _explorer_layers(self) -> dict:
        return {
            layer.name: layer
            for layer in self.viewer.layers
            if (layer.metadata.get(TAG) or {}).get("owner") == OWNER
        }

    def _remove(self, layers) -> None:
        """Remove our layers (still there) in one batch (napari collects garbage once, not per layer)
        without reacting to the removals ourselves."""
        layers = [layer for layer in layers if layer in self.viewer.layers]
        if not layers:
            return
        self._changing_layers = True
        try:
            with self.viewer.layers.batched_update():
                for layer in layers:
                    self.viewer.layers.remove(layer)
        finally:
            self._changing_layers = False

    def _clear_layers(self) -> None:
        self._pending = []
        self._remove(self._explorer_layers().values())

    @property
    def building(self) -> bool:
        """Whether layers are still being added or refilled (one per turn of the event loop) or the
        structure chart is waiting to be redrawn."""
        return bool(self._pending) or self._chart_timer.isActive()

    def update_view(self, *_) -> None:
        """Show the chosen maps and hide the rest; derived maps come from the cached attention.

        Adding or deleting a napari layer takes about 0.2 s (deleting one makes napari collect garbage),
        so the explorer does neither more than it must:
        - an unticked map's layer is hidden, not deleted; ticking it again shows it at once;
        - after a re-run (or another result) the same layers get the new data: their place, opacity and
          visibility stay as the user left them;
        - new layers are added, and layers refilled, one per turn of the event loop, so the viewer
          keeps answering in between."""
        if self._changing_layers:
            return
        result = self.result
        wanted = self.wanted_layers()
        existing = self._explorer_layers()
        shown, later, gone = [], [], []
        self._changing_layers = True
        try:
            for name, layer in existing.items():
                tag = layer.metadata[TAG]
                if name in wanted:
                    if tag.get("parked"):
                        layer.visible = True
                        tag["parked"] = False
                    if tag.get("result") != id(result):
                        shown.append(("refill", name, wanted[name]))
                else:
                    if not tag.get("parked"):
                        layer.visible = False
                        tag["parked"] = True
                    if tag.get("result") != id(result):  # hidden, but never left holding stale maps
                        if result is not None and (tag.get("af") is None or tag["af"] in result.attention):
                            later.append(("refill", name, (tag["kind"], tag.get("af"), tag.get("k"))))
                        else:
                            gone.append(layer)
        finally:
            self._changing_layers = False
        self._remove(gone)
        shown += [("add", name, spec) for name, spec in wanted.items() if name not in existing]
        # each map is computed on a worker thread, one at a time while the GUI thread is idle (not
        # while it hands the previous one to napari: two cores, and the display server needs one)
        self._pending = [[result, action, name, spec, None] for action, name, spec in shown + later]
        if self._pending:
            # napari selects each new layer; the user's selection comes back once the layers are in
            if self._selected is None:
                self._selected = self.viewer.layers.selection.active
            self._build_timer.start()
        self._show_legend(result)
        self._chart_timer.start(80)  # once the clicks pause, like the cursor chart

    def build_now(self) -> None:
        """Finish the queued layer work at once (scripts and screenshots)."""
        while self._pending:
            self._build_next(wait=True)
        if self._chart_timer.isActive():
            self._chart_timer.stop()
            self.update_structure_chart(wait=True)

    def _build_next(self, wait: bool = False) -> None:
        if not self._pending:
            return
        task = self._pending[0]
        result, action, name, spec, content = task
        kind, af, k = spec
        if content is None:
            task[4] = content = _background_pool().submit(layer_content, result, *spec)
        if not (wait or content.done()):  # still being computed: look again in a moment
            self._build_timer.start()
            return
        self._pending.pop(0)
        if result is self.result:  # a newer choice has replaced the queue otherwise
            self._changing_layers = True
            try:
                if action == "add" and name not in self.viewer.layers:
                    self._add_layer(result, name, kind, af, k, content.result())
                elif action == "refill" and name in self.viewer.layers:
                    self._refill_layer(self.viewer.layers[name], result, kind, af, k, content.result())
            finally:
                self._changing_layers = False
        if self._pending:
            self._build_timer.start()
        else:
            self._show_legend(self.result)
            selected, self._selected = self._selected, None
            if selected is not None and selected in self.viewer.layers:
                self.viewer.layers.selection.active = selected

    def _text_overlay(self):
        canvas = getattr(self.viewer, "canvas", None)  # napari 0.9 moved the text overlay to the canvas
        return canvas.overlays.text if canvas is not None else self.viewer.text_overlay

    def _prepare_canvas_legend(self) -> None:
        """Draw the legend's characters once, invisibly, while the dock opens: the first frame with
        new text makes vispy rasterise each glyph (about 0.25 s on a 2-core CPU), a pause that would
        otherwise fall on the moment a run's results arrive."""
        overlay = self._text_overlay()
        if overlay.visible:  # someone else's text is on the canvas: leave it alone
            return
        opacity = overlay.opacity
        overlay.opacity, overlay.text, overlay.visible = 0.0, GLYPHS, True

        def restore() -> None:
            if overlay.text == GLYPHS:
                overlay.visible, overlay.text, overlay.opacity = False, "", opacity

        QTimer.singleShot(150, restore)

    def _show_legend(self, result) -> None:
        """The rate colours in the dock and on the canvas (napari's text overlay)."""
        rates = next(iter(result.rates.values()), ()) if result is not None else ()
        spacing = float(np.prod(result.network_spacing)) ** (1 / 3) if result is not None else None
        self.legend.setText(legend_html(rates, spacing) if rates else "")
        overlay = self._text_overlay()
        if overlay.text == GLYPHS or overlay.opacity == 0.0:  # a result came before the warm-up ended
            overlay.opacity = 1.0
        overlay.visible = bool(rates) and bool(self._explorer_layers())
        overlay.text = legend_text(rates) if rates else ""

    @staticmethod
    def _metadata(result, kind: str, af: str | None, k: int | None) -> dict:
        tag = {"owner": OWNER, "kind": kind, "af": af, "k": k, "parked": False}
        return {TAG: {**tag, "result": id(result), "model": result.request.model_path}}

    def _add_layer(self, result, name: str, kind: str, af: str | None, k: int | None, content) -> None:
        data, style = content
        kwargs = {"name": name, "metadata": self._metadata(result, kind, af, k), **placement(result), **style}
        if kind == "arg-max rate":
            self.viewer.add_labels(data, opacity=0.5, **kwargs)
        elif kind == "blend":
            self.viewer.add_image(data, rgb=True, opacity=0.65, blending="translucent", **kwargs)
        elif kind == "weight":
            self.viewer.add_image(data, blending="additive", **kwargs)
        else:
            self.viewer.add_image(data, opacity=0.7, **kwargs)

    def _refill_layer(self, layer, result, kind: str, af: str | None, k: int | None, content) -> None:
        """A newer result in an existing layer: data, colours and grid change; visibility, opacity and
        the layer's place in the list stay as the user left them."""
        data, style = content
        layer.data = data
        for key, value in {**placement(result), **style}.items():
            setattr(layer, key, value)
        parked = layer.metadata[TAG].get("parked", False)
        layer.metadata = {**layer.metadata, **self._metadata(result, kind, af, k)}
        layer.metadata[TAG]["parked"] = parked

    # -- readout and charts ------------------------------------------------------------------------
    def _on_cursor(self, event=None) -> None:
        layer = self.source_layer
        if layer is None:
            return
        index = tuple(int(round(v)) for v in layer.world_to_data(self.viewer.cursor.position)[-3:])
        if index != self._last_index:
            self._last_index = index
            self.show_voxel(index)

    def show_voxel(self, index) -> dict | None:
        """Chart the weights at a data index of the result; returns the readout."""
        result = self.result
        readout = voxel_readout(result, index) if result is not None else None
        if readout is None:
            self.readout.setText("Outside the volume (or not computed).")
            return None
        _charts.draw_voxel_weights(self.voxel_chart, readout, result.rates)
        self.readout.setText(
            f"{result.class_name(readout['label'])} · zoom {readout['zoom_mm']:.1f} mm "
            f"({readout['zoom_voxels']:.1f} voxels)"
        )
        return readout

    def _on_classes(self, *_) -> None:
        self._means_key = None  # the labels may have been edited since: average them afresh
        self.update_structure_chart()

    def update_structure_chart(self, *_, wait: bool = False) -> None:
        """Redraw the per-structure chart. The means are kept per autofocus layer (for this result
        and these labels); missing ones are averaged on the worker thread, one layer at a time, and
        the chart is drawn when all are in (``wait``: block until then, for scripts)."""
        result = self.result
        if result is None:
            return
        source = self.classes_combo.currentText()
        truth = self.viewer.layers[source] if source in self.viewer.layers else None  # noqa: SIM401
        labels = np.asarray(truth.data) if truth is not None else result.labels
        if labels.shape != result.labels.shape:
            self.structure_chart.message(f"'{source}' is not on the result's grid.")
            return
        layers = self.checked(self.layer_list)
        if not layers:
            self.structure_chart.message("Choose an autofocus layer.")
            return
        if self._pending:  # the layers first; the chart when they are in
            self._chart_timer.start(80)
            return
        key = (id(result), source, id(labels))
        classes = range(result.card.num_classes)
        if self._means_key != key:
            self._means_key, self._means, self._means_job = key, {}, None
            self._class_index = _background_pool().submit(class_index, result, labels, classes)
        job = self._means_job
        if job is not None and (wait or job.done()):
            self._means.update(job.result())
            self._means_job = job = None
        missing = [af for af in layers if af not in self._means]
        if missing:
            if job is None:  # averaged on a worker thread, one autofocus layer at a time
                index = self._class_index.result() if wait else self._class_index
                self._means_job = _background_pool().submit(
                    _means_when_indexed, result, labels, classes, missing[0], index
                )
            if wait:
                self.update_structure_chart(wait=True)
            else:
                self._chart_timer.start(10)
            return
        means = {af: self._means[af] for af in layers}
        _stacked_bars.draw_structure_means(self.structure_chart, means, result.rates, result.class_name)
        self._chart_timer.setInterval(80)
