"""Segment: choose a model and the image layer for each of its channels, run it in the background."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from napari_autofocus._reader import prefer_this_reader
from napari_autofocus.app.inputs import input_problems, match_modalities, modality_names
from napari_autofocus.app.model_library import is_reference_checkpoint, remember_model
from napari_autofocus.app.placement import Placement
from napari_autofocus.app.results import RESULTS
from napari_autofocus.app.session import RESULT_KEY, RunRequest, run_model
from napari_autofocus.widgets import _common, _result_layers, _tips
from napari_autofocus.widgets._run_controls import RunControls
from napari_autofocus.widgets.model_picker import ModelPicker

OWNER = "segment"


class SegmentWidget(QWidget):
    """Main widget. ``run_finished`` fires once a run's outputs are in the viewer, or it failed."""

    run_finished = Signal()

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        prefer_this_reader()
        self.viewer = napari_viewer
        self._result_key = None  # the last run's result, kept by RESULTS only while a layer shows it
        self.picker = ModelPicker()
        self.channel_combos: dict[str, QComboBox] = {}
        self.channel_form = QFormLayout()
        self.input_problem = QLabel()
        self.input_problem.setWordWrap(True)
        self.input_problem.setStyleSheet("color: #e66")
        self.probabilities = QCheckBox("add probability layers")
        self.crop = QCheckBox("only the foreground's bounding box")
        self.crop.setChecked(True)
        self.crop.setToolTip(
            "Compute the box around voxels that are non-zero in any channel (the scan's foreground),\n"
            "as the authors do: faster on skull-stripped scans. Outside it: label 0 and no attention.\n"
            "Untick to compute the whole volume."
        )
        self.controls = RunControls("Run", "Ready.")
        self.device, self.run_button, self.cancel_button = (
            self.controls.device,
            self.controls.run_button,
            self.controls.cancel_button,
        )
        self.status, self.runner = self.controls.status, self.controls.runner
        self.mismatch = QLabel()  # how the scan does not match the model (the predictor's warnings)
        self.mismatch.setWordWrap(True)
        self.mismatch.setStyleSheet("color: #e6a23c")
        self.mismatch.setVisible(False)
        self.legend = QLabel()
        self.legend.setWordWrap(True)
        self._build_layout()
        _tips.apply(self, "segment")

        self.picker.changed.connect(self._rebuild_channels)
        _common.watch_layers(napari_viewer, self._rebuild_channels)
        self.run_button.clicked.connect(self.run)
        self.controls.succeeded.connect(self._on_result)
        self.controls.ended.connect(self.run_finished.emit)
        self._rebuild_channels()

    def _build_layout(self) -> None:
        model_box = QGroupBox("Model")
        QVBoxLayout(model_box).addWidget(self.picker)
        inputs_box = QGroupBox("Inputs (image layer per model channel)")
        inputs = QVBoxLayout(inputs_box)
        inputs.addLayout(self.channel_form)
        inputs.addWidget(self.input_problem)
        options = QFormLayout()
        options.addRow(self.probabilities)
        options.addRow(self.crop)
        layout = _common.scroll_body(self)
        layout.addWidget(model_box)
        layout.addWidget(inputs_box)
        layout.addLayout(options)
        layout.addWidget(self.controls)
        layout.addWidget(self.mismatch)
        layout.addWidget(self.legend)
        layout.addStretch(1)

    # -- inputs ----------------------------------------------------------------------------------
    def modalities(self) -> list[str]:
        card = self.picker.card
        return modality_names(card.modalities, card.in_channels) if card else []

    def mapping(self) -> dict[str, str | None]:
        return {
            m: (None if c.currentText() in ("", _common.NONE) else c.currentText())
            for m, c in self.channel_combos.items()
        }

    def _rebuild_channels(self, *_) -> None:
        """One menu per model channel, pre-filled by name; the user's choices survive layer changes."""
        previous = self.mapping()
        layers = [_common.layer_info(layer) for layer in _common.image_layers(self.viewer)]
        if self.picker.suit(layers):
            return  # the picker switched to a model these layers fit: its change rebuilt the menus
        names = [layer.name for layer in layers]
        auto = match_modalities(self.modalities(), layers)
        while self.channel_form.rowCount():
            self.channel_form.removeRow(0)
        self.channel_combos = {}
        for modality in self.modalities():
            combo = QComboBox()
            chosen = previous.get(modality) if previous.get(modality) in names else auto[modality]
            _common.set_items(combo, [_common.NONE, *names], keep=chosen or _common.NONE)
            combo.setToolTip(f"The image layer that feeds the model's {modality} channel (matched by name).")
            combo.currentTextChanged.connect(self._check_inputs)
            self.channel_combos[modality] = combo
            self.channel_form.addRow(modality, combo)
        self._check_inputs()

    def problems(self) -> list[str]:
        if self.picker.card is None:
            return [self.picker.problem or "No model chosen."]
        layers = [_common.layer_info(layer) for layer in _common.image_layers(self.viewer)]
        problems = input_problems(self.mapping(), layers)
        if problems and self.picker.no_fit.text():  # no bundled model is made for this scan
            problems.append(self.picker.no_fit.text())
        return problems

    def _check_inputs(self, *_) -> None:
        problems = self.problems() if self.picker.card is not None else []
        self.input_problem.setText(" ".join(problems))
        self.input_problem.setVisible(bool(problems))
        warnings = self.mismatches() if self.picker.card is not None and not problems else []
        self.mismatch.setText(
            ("Before you run: " + " ".join(f"• {w}." for w in warnings)) if warnings else ""
        )
        self.mismatch.setVisible(bool(warnings))

    def mismatches(self) -> list[str]:
        """How the chosen layers do not match the model, checked before a run (the predictor's own
        checks, on every 8th voxel: quick enough to redo whenever the choice changes)."""
        from napari_autofocus.inference import predictor

        names = list(self.mapping().values())
        if not names or None in names or any(n not in self.viewer.layers for n in names):
            return []
        layers = [self.viewer.layers[n] for n in names]
        arrays = [np.asarray(layer.data) for layer in layers]
        if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 3:
            return []
        contract = predictor.Contract.from_card(self.picker.card)
        place = Placement.of_layer(layers[0])
        sample = np.stack([a[::2, ::2, ::2] for a in arrays]).astype(np.float32, copy=False)
        return predictor.check_scan(sample, place.spacing, contract, names, place.description, arrays)

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Validate, then start the worker; problems become error notifications."""
        problems = self.problems()
        if problems:
            _common.error(" ".join(problems))
            return
        names = list(self.mapping().values())
        layers = [self.viewer.layers[name] for name in names]
        inputs = [np.asarray(layer.data) for layer in layers]
        place = Placement.of_layer(layers[0])
        entry = self.picker.entry
        arch = self.picker.arch.currentText() if is_reference_checkpoint(entry.path) else "auto"
        request = RunRequest(
            entry.path,
            arch,
            self.controls.device_name,
            self.probabilities.isChecked(),
            crop=self.crop.isChecked(),
        )

        def job(progress, status, cancel):
            return run_model(
                request,
                inputs,
                input_layers=names,
                placement=place,
                progress=progress,
                status=status,
                cancel=cancel,
            )

        if self.controls.start(job, f"Segment ({request.model_name})", f"Loading {request.model_name}…"):
            remember_model(entry.path, arch)
            self.mismatch.setVisible(False)

    def cancel(self) -> None:
        self.runner.cancel()

    @property
    def result(self):
        """The last run's result while its labels layer is open (the widget never keeps a deleted
        result's model and arrays alive)."""
        return RESULTS.get(self._result_key)

    def _on_result(self, result) -> None:
        _result_layers.remove_outputs(self.viewer, OWNER, result.request.model_path)
        layer = _result_layers.add_labels(self.viewer, result, OWNER)
        self._result_key = layer.metadata[RESULT_KEY]
        _result_layers.add_probabilities(self.viewer, result, OWNER)
        self.viewer.layers.selection.active = layer
        self.status.setText(
            f"Done on {result.device} in {result.seconds:.1f} s: '{layer.name}' with "
            f"{len(result.attention)} autofocus layer(s) of attention for the explorer."
            + _computed_region_note(result)
            + (f" Note: {_result_layers.EMPTY_RESULT}." if result.empty else "")
        )
        self.legend.setText(f"Labels: {_result_layers.legend(result)}")
        self.mismatch.setText(mismatch_note(result))
        self.mismatch.setVisible(bool(result.warnings))


def mismatch_note(result) -> str:
    """The predictor's warnings as the widget shows them (empty when the scan matches the model)."""
    if not result.warnings:
        return ""
    return "Check the inputs: " + " ".join(f"• {w}." for w in result.warnings)


def _computed_region_note(result) -> str:
    """Say so when the network saw only part of the volume (the crop), and where."""
    box, shape = result.crop_box, result.labels.shape
    if box is None:
        return " The region of interest was empty: nothing was computed."
    if all(a == 0 and b == n for (a, b), n in zip(box, shape, strict=True)):
        return ""
    extent = " x ".join(f"{a}-{b}" for a, b in box)
    return f" Computed inside the foreground box {extent}; outside it: label 0, no attention."
