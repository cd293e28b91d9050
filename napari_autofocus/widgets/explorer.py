"""Attention explorer: the cached attention of a result as colour layers, a voxel readout and charts.

Everything here reads the :class:`~napari_autofocus.app.session.SegmentationResult` stored on a labels
layer; switching layers, rates or maps only changes which napari layers are shown, never re-runs
the network.
"""

from __future__ import annotations

import string

import numpy as np
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
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_autofocus._reader import prefer_this_reader
from napari_autofocus.analysis.explorer_maps import (
    class_index,
    derived_layer_name,
    legend_html,
    map_legend,
    structure_means,
    voxel_readout,
    weight_layer_name,
)
from napari_autofocus.app.results import RESULTS
from napari_autofocus.widgets import _charts, _common, _stacked_bars
from napari_autofocus.widgets._explorer_layers import ExplorerLayers, background_pool
from napari_autofocus.widgets._result_layers import TAG, result_notes

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
CURSOR_HINT = "Move the mouse over the image for the weights under the cursor."
# every character the canvas legend can show (rate names, units, warnings): rasterised while the dock opens
GLYPHS = string.ascii_letters + string.digits + " ·=,.:;-+()'%/!?\u26a0"
KIND_ORDER = ("blend", "region", "weight", "arg-max rate", "expected rate", "entropy", "zoom")
LABELS_3D = {"blending": "additive", "opacity": 0.3}  # the prediction in 3D: seen through, not a wall


def region_layer_name(layer: str, rate: int) -> str:
    """The 3D view of a blend: one surface per rate, around where that rate has the largest weight."""
    return f"{weight_layer_name(layer, rate)} region (3D)"


def _layer_means(result, labels, classes, af: str, index):
    """(class index, {af: means}) for one autofocus layer; the index is built on the first call and
    handed back for the next (no job waits for another: the worker runs one at a time)."""
    index = index if index is not None else class_index(result, labels, classes)
    return index, structure_means(result, labels, classes, [af], index)


class ExplorerWidget(QWidget):
    def __init__(self, napari_viewer) -> None:
        super().__init__()
        prefer_this_reader()
        self.viewer = napari_viewer
        self._last_index = None
        self._shown_result = None  # id of the result the layers were built from
        self.maps = ExplorerLayers(napari_viewer, lambda: self.result, self)
        self.maps.built = self._on_built
        self.maps.visibility_changed = lambda: self._show_legend(self.result)
        self._chart_timer = QTimer(self)
        self._chart_timer.setSingleShot(True)
        self._chart_timer.setInterval(80)
        self._chart_timer.timeout.connect(self.update_structure_chart)
        self._means_key, self._means = None, {}  # per-structure means kept per autofocus layer
        self._class_index = None  # where each class lies (built with the first layer's means, then shared)
        self._labels = None  # the labels the means are taken in
        self._means_job = None  # a future: one autofocus layer's means
        self.result_combo = QComboBox()
        self.layer_list = QListWidget()
        self.rate_list = QListWidget()
        for lst in (self.layer_list, self.rate_list):
            lst.setMaximumHeight(90)
        self.step_slider = QSlider(Qt.Orientation.Horizontal)  # one ticked autofocus layer on the canvas
        self.step_slider.setMinimum(0)
        self.step_slider.setPageStep(1)
        self.step_label = QLabel()
        self.step_slider.setToolTip(
            "Several autofocus layers are ticked: the canvas shows one at a time (stacked, their\n"
            "colours would mix into one). Slide to step from AF1 to the last; the charts show all."
        )
        self.warning = QLabel()  # how the scan does not fit the model, or an empty result
        self.warning.setWordWrap(True)
        self.warning.setStyleSheet("color: #f0a030")
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
        self.readout = QLabel(CURSOR_HINT)
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
        self.step_slider.valueChanged.connect(self.update_view)
        self._labels_2d = {}  # the prediction's look in 2D, given back when the viewer leaves 3D
        napari_viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        # layer events come in bursts (a re-run removes its old labels and adds the new ones): look
        # once the burst is over, so a re-run refills the explorer's layers instead of dropping them
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh)
        # a result comes or goes: RESULTS says so (its added/removed signals); layers renamed,
        # reordered or a ground truth opened: napari's layer events
        RESULTS.added.connect(self._results_changed)
        RESULTS.removed.connect(self._results_changed)
        _common.watch_layers(napari_viewer, self._layers_changed)  # bound methods: napari holds them
        # weakly, so a closed dock stops listening
        # the cursor fires for every voxel it crosses: redraw the chart once it pauses (80 ms)
        self._cursor_timer = QTimer(self)
        self._cursor_timer.setSingleShot(True)
        self._cursor_timer.setInterval(80)
        self._cursor_timer.timeout.connect(self._on_cursor)
        napari_viewer.cursor.events.position.connect(self._cursor_moved)
        self.refresh()
        QTimer.singleShot(0, self._prepare_canvas_legend)

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("result", self.result_combo)
        form.addRow(self.warning)
        choose = QGridLayout()
        choose.addWidget(QLabel("autofocus layers"), 0, 0)
        choose.addWidget(QLabel("dilation rates"), 0, 1)
        choose.addWidget(self.layer_list, 1, 0)
        choose.addWidget(self.rate_list, 1, 1)
        step = QGridLayout()
        step.addWidget(QLabel("on the canvas"), 0, 0)
        step.addWidget(self.step_slider, 0, 1)
        step.addWidget(self.step_label, 0, 2)
        choose.addLayout(step, 2, 0, 1, 2)
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
        return RESULTS.of(layer) if layer is not None else None

    def _results_changed(self, _id: str) -> None:
        try:
            self._refresh_timer.start()
        except RuntimeError:  # the dock was closed and Qt deleted it: nothing left to refresh
            RESULTS.added.disconnect(self._results_changed)
            RESULTS.removed.disconnect(self._results_changed)

    def _layers_changed(self, *_) -> None:
        self._refresh_timer.start()

    def _cursor_moved(self, *_) -> None:
        self._cursor_timer.start()

    def refresh(self, *_) -> None:
        """Follow the viewer's result layers (runs once after each burst of layer events)."""
        if self.maps.changing:
            return
        layers = _common.result_layers(self.viewer)
        names = [layer.name for layer in layers]
        # the newest Segment result first: Compare's and the counterfactuals' are there to choose
        made_by = [(layer.metadata.get(TAG) or {}).get("owner") for layer in layers]
        segmented = [name for name, owner in zip(names, made_by, strict=True) if owner == "segment"]
        default = (segmented or names)[-1] if names else None
        _common.set_items(self.result_combo, names, default=default)
        truth = [PREDICTED] + [layer.name for layer in _common.truth_layers(self.viewer)]
        _common.set_items(self.classes_combo, truth)
        if not names:
            self.maps.clear()
            self.structure_chart.message("Run Segment first: the explorer shows its attention.")
        elif self.result.id != self._shown_result:  # same name, new result (a re-run)
            self._on_result()

    def _on_result(self, *_) -> None:
        result = self.result
        self._shown_result = result.id if result is not None else None
        self._fill_list(self.layer_list, list(result.attention) if result else [], checked={0})
        rates = sorted({r for rs in (result.rates.values() if result else []) for r in rs})
        self._fill_list(self.rate_list, [str(r) for r in rates], checked=None)
        self._last_index = None
        self.readout.setText(CURSOR_HINT)  # the chart of another result's voxel would mislead
        self.voxel_chart.message("No voxel yet for this result.")
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
        """Layer name -> (kind, autofocus layer, rate index) for the current choices. In 3D a blend
        is drawn as one translucent surface per rate instead (an RGB volume renders as a block)."""
        result = self.result
        if result is None:
            return {}
        rates = {int(r) for r in self.checked(self.rate_list)}
        maps = {name for name, box in self.map_boxes.items() if box.isChecked()}
        in_3d = self.viewer.dims.ndisplay == 3
        wanted = {}
        for af in self.checked(self.layer_list):
            if "blend" in maps and not in_3d:
                wanted[derived_layer_name(af, "blend")] = ("blend", af, None)
            for k, r in enumerate(result.rates[af]):
                if "blend" in maps and in_3d and r in rates:
                    wanted[region_layer_name(af, r)] = ("region", af, k)
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

    @property
    def shown_autofocus_layer(self) -> str | None:
        """The ticked autofocus layer on the canvas (the slider's, when several are ticked)."""
        ticked = self.checked(self.layer_list)
        if not ticked:
            return None
        return ticked[min(self.step_slider.value(), len(ticked) - 1)]

    def _update_step(self) -> None:
        """The slider over the ticked autofocus layers: shown only when there is more than one."""
        ticked = self.checked(self.layer_list)
        self.step_slider.blockSignals(True)
        self.step_slider.setMaximum(max(len(ticked) - 1, 0))
        self.step_slider.blockSignals(False)
        several = len(ticked) > 1
        for widget in (self.step_slider, self.step_label):
            widget.setVisible(several)
        place = f"{self.shown_autofocus_layer} ({self.step_slider.value() + 1} of {len(ticked)})"
        self.step_label.setText(place if several else "")

    def _layer_order(self, result):
        """Sort key of an explorer layer, top of the layer list first: AF1 before AF2, and within
        one autofocus layer its maps in the order of the check boxes; the zoom (all layers) last."""
        afs = list(result.attention) if result is not None else []

        def key(layer):
            tag = layer.metadata[TAG]
            af, kind = tag.get("af"), tag.get("kind")
            place = afs.index(af) if af in afs else len(afs)
            return place, KIND_ORDER.index(kind) if kind in KIND_ORDER else 0, tag.get("k") or 0

        return key

    @property
    def building(self) -> bool:
        """Whether layers are still being added or refilled (one per turn of the event loop) or the
        structure chart is waiting to be redrawn."""
        return self.maps.building or self._chart_timer.isActive()

    def update_view(self, *_) -> None:
        """Show the chosen maps and hide the rest (see :class:`ExplorerLayers` for how)."""
        if self.maps.changing:
            return
        result = self.result
        self._update_step()
        wanted = self.wanted_layers()
        shown = self.shown_autofocus_layer
        hidden = {name for name, (_, af, _) in wanted.items() if af is not None and af != shown}
        self.maps.show(result, wanted, hidden)
        self._show_legend(result)
        self._chart_timer.start(80)  # once the clicks pause, like the cursor chart

    def _on_built(self) -> None:
        """The layers are in: AF1 first in the layer list, all under the prediction, which is
        drawn as outlines so that it never tints the attention colours under it."""
        result, labels = self.result, self.source_layer
        self.maps.arrange(labels, self._layer_order(result))
        if labels is not None and not labels.metadata.get("explorer_outlined"):
            labels.metadata["explorer_outlined"] = True  # once: the user may fill it again
            labels.contour = max(labels.contour, 1)
        self._show_legend(result)

    def _on_ndisplay(self, *_) -> None:
        """2D <-> 3D: the blend becomes per-rate surfaces and back; the prediction is seen through."""
        labels = self.source_layer
        if self.viewer.dims.ndisplay == 3 and labels is not None:
            self._labels_2d = {"layer": labels, **{key: getattr(labels, key) for key in LABELS_3D}}
            for key, value in LABELS_3D.items():
                setattr(labels, key, value)
        elif self._labels_2d:
            layer = self._labels_2d.pop("layer")
            if layer in self.viewer.layers:
                for key, value in self._labels_2d.items():
                    setattr(layer, key, value)
            self._labels_2d = {}
        self.update_view()

    def build_now(self) -> None:
        """Finish the queued layer work and the chart at once (scripts and screenshots)."""
        self.maps.build_now()
        if self._chart_timer.isActive():
            self._chart_timer.stop()
            self.update_structure_chart(wait=True)

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
        """The rate colours in the dock; on the canvas (napari's text overlay) one line per kind
        of map shown, with its units, under the result's warnings."""
        rates = next(iter(result.rates.values()), ()) if result is not None else ()
        spacing = float(np.prod(result.network_spacing)) ** (1 / 3) if result is not None else None
        self.legend.setText(legend_html(rates, spacing) if rates else "")
        notes = result_notes(result)
        self.warning.setText("\n".join(notes))
        self.warning.setVisible(bool(notes))
        lines = []
        for layer in sorted(self.maps.layers().values(), key=self._layer_order(result)):
            tag = layer.metadata[TAG]
            if not layer.visible or result is None:
                continue
            kind, af = tag.get("kind"), tag.get("af")
            limits = tuple(layer.contrast_limits) if kind in ("expected rate", "entropy", "zoom") else None
            line = map_legend(kind, af, result.rates.get(af, rates), limits)
            if line not in lines:
                lines.append(line)
        overlay = self._text_overlay()
        if overlay.text == GLYPHS or overlay.opacity == 0.0:  # a result came before the warm-up ended
            overlay.opacity = 1.0
        text = "\n".join([*(f"\u26a0 {note}" for note in notes), *lines]) if lines else ""
        overlay.position, overlay.font_size = "bottom_left", 9  # long lines: from the left edge
        overlay.visible = bool(text)
        overlay.text = text

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
        key = (result.id, source)  # (not id(truth): a plugin sees layers through new proxies each time)
        if self._means_key != key:  # the labels read once per result and source (memmap, dask: a copy)
            self._labels = np.asarray(truth.data) if truth is not None else result.labels
        labels = self._labels
        if labels.shape != result.labels.shape:
            self.structure_chart.message(f"'{source}' is not on the result's grid.")
            return
        layers = self.checked(self.layer_list)
        if not layers:
            self.structure_chart.message("Choose an autofocus layer.")
            return
        if self.maps.building:  # the layers first; the chart when they are in
            self._chart_timer.start(80)
            return
        classes = range(result.card.num_classes)
        if self._means_key != key:
            self._means_key, self._means, self._means_job, self._class_index = key, {}, None, None
        job = self._means_job
        if job is not None and (wait or job.done()):
            self._class_index, means = job.result()
            self._means.update(means)
            self._means_job = job = None
        missing = [af for af in layers if af not in self._means]
        if missing:
            if job is None:  # averaged on a worker thread, one autofocus layer at a time
                self._means_job = background_pool().submit(
                    _layer_means, result, labels, classes, missing[0], self._class_index
                )
            if wait:
                self.update_structure_chart(wait=True)
            else:
                self._chart_timer.start(10)
            return
        means = {af: self._means[af] for af in layers}
        _stacked_bars.draw_structure_means(self.structure_chart, means, result.rates, result.class_name)
        self._chart_timer.setInterval(80)
