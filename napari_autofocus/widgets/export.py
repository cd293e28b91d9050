"""Export: write a result's labels, attention and derived maps as NIfTI in the source geometry."""

from __future__ import annotations

from pathlib import Path

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
from napari_autofocus.errors import AutofocusError
from napari_autofocus.export import KINDS, existing_files, export_result
from napari_autofocus.session import RESULT_KEY
from napari_autofocus.widgets import _common

DESCRIPTIONS = {
    "labels": "labels",
    "probabilities": "probabilities (if computed)",
    "attention": "attention (K weights per layer)",
    "derived": "derived maps (arg-max/expected rate, entropy, zoom)",
}


class ExportWidget(QWidget):
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

        self.browse.clicked.connect(self._browse)
        self.export_button.clicked.connect(self.export)
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

    def export(self) -> list[Path]:
        name = self.result_combo.currentText()
        if name not in self.viewer.layers:
            _common.error("Nothing to export: run Segment first.")
            return []
        folder = self.folder.text().strip()
        if not folder:
            _common.error("Choose an output folder first.")
            return []
        result = self.viewer.layers[name].metadata[RESULT_KEY]
        kinds = [kind for kind, box in self.kind_boxes.items() if box.isChecked()]
        clash = existing_files(folder, result, kinds)
        if clash and not self.confirm_overwrite(clash):
            _common.info("Export cancelled; no file was changed.")
            return []
        try:
            self.written = export_result(result, folder, kinds, overwrite=bool(clash))
        except (AutofocusError, OSError) as exc:
            _common.error(f"Export failed: {exc}")
            return []
        self.status.setText(f"Wrote {len(self.written)} file(s) to {folder}.")
        _common.info(f"Exported {len(self.written)} file(s) to {folder}.")
        return self.written
