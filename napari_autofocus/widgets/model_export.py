"""Export model: a model file as a bioimage.io package or a MONAI bundle, from inside napari.

A view over :mod:`napari_autofocus.exchange.formats`: pick a model, a format and a folder; the export
runs in the background. The formats' tools load only when an export starts.
"""

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
    QPushButton,
    QWidget,
)

from napari_autofocus.app.model_library import model_name
from napari_autofocus.errors import AutofocusError
from napari_autofocus.exchange.formats import FORMATS, check_format, output_path
from napari_autofocus.widgets import _common
from napari_autofocus.widgets._background import BackgroundRun
from napari_autofocus.widgets.model_picker import ModelPicker


class ModelExportWidget(QWidget):
    """``export_finished`` fires when an export has ended (written or not)."""

    export_finished = Signal()

    def __init__(self, napari_viewer=None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.written: Path | None = None
        self.picker = ModelPicker(self)
        self.format_combo = QComboBox()
        for key, (description, _) in FORMATS.items():
            self.format_combo.addItem(description, key)
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("output folder")
        self.browse = QPushButton("…")
        self.replace = QCheckBox("replace an earlier export of this tool")
        self.export_button = QPushButton("Export model")
        self.status = QLabel(
            "bioimage.io packages run in ilastik, deepImageJ and bioimage.io's tools, with each "
            "autofocus layer's attention as an output; MONAI bundles run with MONAI's bundle commands."
        )
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("model", self.picker)
        form.addRow("format", self.format_combo)
        folder = QHBoxLayout()
        folder.addWidget(self.folder, 1)
        folder.addWidget(self.browse)
        form.addRow("folder", folder)
        layout = _common.scroll_body(self)
        layout.addLayout(form)
        layout.addWidget(self.replace)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.format_combo.setToolTip("bioimage.io: a .bioimageio.zip package; MONAI: a bundle folder")
        self.replace.setToolTip("Only a package or bundle napari-autofocus wrote is ever replaced")
        self.browse.clicked.connect(self._browse)
        self.runner = BackgroundRun(self, layers_per_result=0)
        self.runner.succeeded.connect(self._on_written)
        self.runner.ended.connect(self._on_ended)
        self.export_button.clicked.connect(self.start_export)

    @property
    def format(self) -> str:
        return self.format_combo.currentData()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export the model to folder")
        if folder:
            self.folder.setText(folder)

    def _job(self):
        """(format, model path, folder, hints) to export, or None (the user was told why)."""
        path, folder = self.picker.path, self.folder.text().strip()
        if not path:
            _common.error("Choose a model to export first.")
            return None
        if not folder:
            _common.error("Choose an output folder first.")
            return None
        try:
            check_format(self.format)
        except AutofocusError as exc:
            _common.error(str(exc))
            return None
        entry = self.picker.entry
        hints = {"arch": entry.arch} if entry is not None and entry.arch != "auto" else {}
        return self.format, path, folder, hints

    def start_export(self) -> None:
        """Export in the background (a few seconds: the test tensors run the network once)."""
        job = self._job()
        if job is None:
            self.export_finished.emit()
            return
        fmt, path, folder, hints = job
        force = self.replace.isChecked()

        def work(progress, status, cancel):
            from napari_autofocus.exchange.formats import export_model

            return export_model(fmt, path, folder, force=force, **hints)

        if self.runner.start(work, "Export model"):
            self.export_button.setEnabled(False)
            target = output_path(fmt, folder, model_name(path).split(".")[0])
            self.status.setText(f"Writing {target.name}…")

    def _on_written(self, written) -> None:
        self.written = Path(written)
        self.status.setText(f"Wrote {self.written}.")
        _common.info(f"Exported the model to {self.written}.")

    def _on_ended(self) -> None:
        self.export_button.setEnabled(True)
        if self.runner.last_error:
            self.status.setText(self.runner.last_error)
        self.export_finished.emit()
