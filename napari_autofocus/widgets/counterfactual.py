"""Counterfactuals: force one autofocus layer's attention, re-segment, show what changed."""

from __future__ import annotations

import dataclasses

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QWidget

from napari_autofocus._reader import prefer_this_reader
from napari_autofocus.analysis.forced_attention import compare_to_reference, override_choices
from napari_autofocus.app.results import RESULTS
from napari_autofocus.app.session import run_model
from napari_autofocus.widgets import _common, _result_layers, _table, _tips
from napari_autofocus.widgets._run_controls import RunControls

OWNER = "counterfactual"


class CounterfactualWidget(QWidget):
    run_finished = Signal()

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        prefer_this_reader()
        self.viewer = napari_viewer
        self.report = None
        self.result_combo = QComboBox()
        self.layer_combo = QComboBox()
        self.mode_combo = QComboBox()
        self.reference_combo = QComboBox()
        self.reference_combo.setToolTip(
            "Dice against this labels layer, or against the unmodified prediction"
        )
        self.controls = RunControls(
            "Re-segment",
            "Force a layer's attention to see how much its choice of scale matters.",
            with_device=False,  # the result's own model and device are reused
        )
        self.run_button, self.cancel_button = self.controls.run_button, self.controls.cancel_button
        self.status, self.runner = self.controls.status, self.controls.runner
        self.table = _table.make_table()
        self.reference_label = QLabel()

        form = QFormLayout()
        form.addRow("result", self.result_combo)
        form.addRow("autofocus layer", self.layer_combo)
        form.addRow("force", self.mode_combo)
        form.addRow("Dice against", self.reference_combo)
        layout = _common.scroll_body(self)
        layout.addLayout(form)
        layout.addWidget(self.controls)
        layout.addWidget(self.reference_label)
        layout.addWidget(self.table)
        layout.addStretch(1)

        _tips.apply(self, "counterfactual")
        self.result_combo.currentTextChanged.connect(self._on_result)
        self.layer_combo.currentTextChanged.connect(self._on_layer)
        self.run_button.clicked.connect(self.run)
        self.controls.succeeded.connect(self._on_done)
        self.controls.ended.connect(self.run_finished.emit)
        _common.watch_layers(napari_viewer, self._refresh)
        self._refresh()

    @property
    def result(self):
        name = self.result_combo.currentText()
        return RESULTS.of(self.viewer.layers[name]) if name in self.viewer.layers else None

    def _refresh(self, *_) -> None:
        results = [
            layer.name
            for layer in _common.result_layers(self.viewer)
            if (layer.metadata.get(_result_layers.TAG) or {}).get("owner") != OWNER
        ]
        _common.set_items(self.result_combo, results, default=results[-1] if results else None)
        refs = [_common.NONE] + [layer.name for layer in _common.truth_layers(self.viewer)]
        _common.set_items(self.reference_combo, refs, default=refs[1] if len(refs) > 1 else None)
        if self.layer_combo.count() == 0:
            self._on_result()

    def _on_result(self, *_) -> None:
        result = self.result
        _common.set_items(self.layer_combo, list(result.attention) if result else [])
        self._on_layer()

    def _on_layer(self, *_) -> None:
        result, layer = self.result, self.layer_combo.currentText()
        choices = override_choices(result.rates[layer]) if result and layer in result.rates else []
        self._choices = dict(choices)
        _common.set_items(self.mode_combo, [label for label, _ in choices])

    def run(self) -> None:
        result = self.result
        if result is None:
            _common.error("Counterfactuals need a segmentation: run Segment first.")
            return
        if not result.attention:
            _common.error(f"{result.name} has no autofocus layer to force.")
            return
        layer, label = self.layer_combo.currentText(), self.mode_combo.currentText()
        request = dataclasses.replace(
            result.request, override=(layer, self._choices[label]), probabilities=False
        )
        ref_name = self.reference_combo.currentText()
        truth = np.asarray(self.viewer.layers[ref_name].data) if ref_name in self.viewer.layers else None
        if truth is not None and truth.shape != result.labels.shape:
            _common.error(f"'{ref_name}' has shape {truth.shape}, not the result's {result.labels.shape}.")
            return
        classes = {v: result.class_name(v) for v in range(result.card.num_classes)}

        def job(progress, status, cancel):
            modified = run_model(
                request,
                result.inputs,
                input_layers=result.input_layers,
                placement=result.placement,
                progress=progress,
                status=status,
                cancel=cancel,
                model=result.model,
                card=result.card,
            )
            return modified, compare_to_reference(result.labels, modified.labels, classes, truth)

        self._what = f"{layer} {label}"
        self.controls.start(
            job, f"Counterfactual ({result.name}, {self._what})", f"Re-segmenting with {self._what}…"
        )

    def _on_done(self, outcome) -> None:
        """The modified labels as outlines, the changed voxels filled on top in a colour no class
        has, and the Dice table in columns narrow enough to read without scrolling."""
        modified, report = outcome
        self.report = report
        model = modified.request.model_path
        _result_layers.remove_outputs(self.viewer, OWNER, model)
        counterfactual = _result_layers.add_labels(
            self.viewer, modified, OWNER, name=f"{modified.name} counterfactual labels"
        )
        counterfactual.contour = 1
        source = self._source_layer()
        mark = _result_layers.distinct_colour(source or counterfactual, modified.card.num_classes)
        self.viewer.add_labels(
            report.changed,
            name=f"{modified.name} changed voxels",
            metadata=_result_layers.base_metadata(modified, OWNER, "changed voxels"),
            features={"index": [0, 1], "change": ["unchanged", "changed"]},
            colormap=DirectLabelColormap(color_dict={None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: mark}),
            opacity=0.9,
            **_result_layers.placement(modified),
        )
        self.reference_label.setText(f"Dice against the {report.reference}:")
        _table.fill(
            self.table,
            ["class", "before", "after", "Δ Dice"],
            [[name, before, after, after - before] for name, before, after in report.rows],
        )
        self.status.setText(
            f"{self._what}: {report.changed_voxels} voxel(s) changed label (drawn in the "
            f"'{modified.name} changed voxels' layer); mean Dice change {report.mean_delta:+.3f} "
            f"against the {report.reference}."
        )

    def _source_layer(self):
        name = self.result_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401
