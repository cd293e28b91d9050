"""Export: write a result's labels, attention and derived maps as NIfTI in the source geometry."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QWidget,
)

from napari_autofocus._reader import prefer_this_reader
from napari_autofocus.app.result_export import KINDS, existing_files, export_result
from napari_autofocus.app.results import RESULTS
from napari_autofocus.errors import AutofocusError
from napari_autofocus.widgets import _common, _tips
from napari_autofocus.widgets._background import BackgroundRun

DESCRIPTIONS = {
    "labels": "labels",
    "probabilities": "probabilities (if computed)",
    "attention": "attention (K weights per layer)",
    "derived": "derived maps (arg-max/expected rate, entropy, zoom)",
}


class ExportWidget(QWidget):
    """Write a result's files. ``export_finished`` fires when a background export has ended."""

    export_finished = Signal()

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        prefer_this_reader()
        self.viewer = napari_viewer
        self.written: list[Path] = []
        self.result_combo = QComboBox()
        self.kind_boxes = {kind: QCheckBox(DESCRIPTIONS[kind]) for kind in KINDS}
        for kind, box in self.kind_boxes.items():
            box.setChecked(kind in ("labels", "attention", "derived"))
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("output folder")
        self.browse = QPushButton("…")
        self.export_button = QPushButton("Export")
        self.status = QLabel(
            "Files keep the input scan's affine; a JSON records model, options and versions."
        )
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("result", self.result_combo)
        folder = QHBoxLayout()
        folder.addWidget(self.folder, 1)
        folder.addWidget(self.browse)
        form.addRow("folder", folder)
        layout = _common.scroll_body(self)
        layout.addLayout(form)
        for box in self.kind_boxes.values():
            layout.addWidget(box)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        _tips.apply(self, "export")
        for kind, box in self.kind_boxes.items():
            box.setToolTip(_tips.TIPS["export_kinds"][kind])
        self.browse.clicked.connect(self._browse)
        self.runner = BackgroundRun(self, layers_per_result=0)  # files, no layers
        self.runner.succeeded.connect(self._on_written)
        self.runner.ended.connect(self._on_ended)
        self.export_button.clicked.connect(self.start_export)
        _common.watch_layers(napari_viewer, self._refresh)
        self._refresh()

    def _refresh(self, *_) -> None:
        names = [layer.name for layer in _common.result_layers(self.viewer)]
        _common.set_items(self.result_combo, names, default=names[-1] if names else None)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export to folder")
        if folder:
            self.folder.setText(folder)

    def confirm_overwrite(self, paths: list[Path]) -> bool:
        """Ask before replacing files (tests patch this)."""
        shown = "\n".join(p.name for p in paths[:8]) + ("\n…" if len(paths) > 8 else "")
        answer = QMessageBox.question(
            self, "Overwrite files?", f"These files exist and would be replaced:\n{shown}"
        )
        return answer == QMessageBox.StandardButton.Yes

    def _prepare(self):
        """(result, folder, kinds, overwrite) for an export the user confirmed, or None (said why)."""
        name = self.result_combo.currentText()
        if name not in self.viewer.layers:
            _common.error("Nothing to export: run Segment first.")
            return None
        folder = self.folder.text().strip()
        if not folder:
            _common.error("Choose an output folder first.")
            return None
        result = RESULTS.of(self.viewer.layers[name])
        kinds = [kind for kind, box in self.kind_boxes.items() if box.isChecked()]
        clash = existing_files(folder, result, kinds)
        if clash and not self.confirm_overwrite(clash):
            _common.info("Export cancelled; no file was changed.")
            return None
        return result, folder, kinds, bool(clash)

    def export(self) -> list[Path]:
        """Export now, on the calling thread (scripts and tests); the button uses :meth:`start_export`."""
        job = self._prepare()
        if job is None:
            return []
        try:
            written = export_result(*job[:3], overwrite=job[3])
        except (AutofocusError, OSError) as exc:
            _common.error(f"Export failed: {exc}")
            return []
        self._done(written, job[1])
        return written

    def start_export(self) -> None:
        """Export in the background: writing dozens of NIfTI files never freezes the viewer."""
        job = self._prepare()
        if job is None:
            self.export_finished.emit()
            return
        result, folder, kinds, overwrite = job

        def work(progress, status, cancel):
            return export_result(result, folder, kinds, overwrite=overwrite)

        if self.runner.start(work, "Export"):
            self.export_button.setEnabled(False)
            self.status.setText(f"Writing files to {folder}…")
            self._folder = folder

    def _on_written(self, written) -> None:
        self._done(written, self._folder)

    def _on_ended(self) -> None:
        self.export_button.setEnabled(True)
        if self.runner.last_error:
            self.status.setText(self.runner.last_error)
        self.export_finished.emit()

    def _done(self, written: list[Path], folder: str) -> None:
        self.written = written
        self.status.setText(f"Wrote {len(written)} file(s) to {folder}.")
        _common.info(f"Exported {len(written)} file(s) to {folder}.")
