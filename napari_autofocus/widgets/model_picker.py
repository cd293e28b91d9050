"""A model menu: bundled models, recently used files, or a file chosen with Browse."""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from napari_autofocus.app.model_library import (
    ARCH_CHOICES,
    ModelEntry,
    ModelFit,
    available_models,
    describe,
    fitting_model,
    is_reference_checkpoint,
    model_fit,
    summary,
    ways_forward,
)
from napari_autofocus.errors import AutofocusError
from napari_autofocus.widgets._tips import TIPS

FITS = "\u2713 fits this scan"  # after a bundled model's name in the menu
FILE_FILTER = "Model files (*.safetensors *.bioimageio.zip *.zip *.pth.tar *.pth *.pt *.tar);;All files (*)"


class ModelPicker(QWidget):
    """Emits ``changed`` after the chosen model's card is read (``card`` is None when unusable)."""

    changed = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.entries: list[ModelEntry] = []
        self.card = None
        self.problem = "No model chosen: pick a bundled or recent model, or Browse for a file."
        self.combo = QComboBox()
        self.combo.setToolTip("Bundled models, recently used files and files chosen with Browse")
        self.browse = QPushButton("Browse…")
        self.browse.setToolTip(TIPS["picker"]["browse"])
        self.arch = QComboBox()
        self.arch.addItems(ARCH_CHOICES)
        self.arch.setToolTip("Architecture of a reference .pth.tar checkpoint ('auto' detects it)")
        self.arch_label = QLabel("architecture")
        self.info = QLabel()
        self.info.setWordWrap(True)
        self.no_fit = QLabel()  # a scan no bundled model is made for: the ways forward
        self.no_fit.setWordWrap(True)
        self.no_fit.setStyleSheet("color: #e6a23c")
        self.no_fit.setVisible(False)
        self.fits: dict[str, ModelFit] = {}  # bundled model path -> whether the open scan fits it
        self._layers = []
        row = QHBoxLayout()
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse)
        arch_row = QHBoxLayout()
        arch_row.addWidget(self.arch_label)
        arch_row.addWidget(self.arch, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addLayout(arch_row)
        layout.addWidget(self.info)
        layout.addWidget(self.no_fit)
        self.chosen = False  # the user picked a model: it is never switched for them
        self.combo.activated.connect(self._mark_chosen)
        self.combo.currentIndexChanged.connect(self._on_choice)
        self.arch.currentTextChanged.connect(self._on_choice)
        self.browse.clicked.connect(self._browse)
        self.refresh()

    @property
    def entry(self) -> ModelEntry | None:
        index = self.combo.currentIndex()
        return self.entries[index] if 0 <= index < len(self.entries) else None

    @property
    def path(self) -> str | None:
        return self.entry.path if self.entry else None

    def refresh(self, select: str | None = None) -> None:
        """Rebuild the list; keep (or select) a path."""
        keep = select or self.path
        extra = [e for e in self.entries if e.source == "file"]
        listed = available_models()
        known = {e.path for e in listed}
        self.entries = listed + [e for e in extra if e.path not in known]
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems([e.label for e in self.entries])
        paths = [e.path for e in self.entries]
        self.combo.setCurrentIndex(paths.index(keep) if keep in paths else (0 if paths else -1))
        self.combo.blockSignals(False)
        self.show_fits(self._layers)
        self._on_choice()

    def _mark_chosen(self, index: int) -> None:
        """The user picked ``index`` (Qt says so after the index changed, so a switch made in
        between by :meth:`suit` is undone here)."""
        self.chosen = True
        if self.combo.currentIndex() != index:
            self.combo.setCurrentIndex(index)

    def suit(self, layers) -> bool:
        """Until the user picks one, show the first bundled model that the open image layers fit
        (a 4-channel brain scan gets a brain model, a 2-channel phantom a phantom model). True
        when the choice changed (``changed`` was emitted)."""
        self.show_fits(layers)
        if self.chosen or not layers:
            return False
        entry = self.entry
        if entry is not None and entry.source == "bundled" and fitting_model([entry], layers) is entry:
            return False
        fitting = fitting_model(self.entries, layers)
        if fitting is None or fitting is entry:
            return False
        self.combo.blockSignals(True)
        self.combo.setCurrentIndex(self.entries.index(fitting))
        self.combo.blockSignals(False)
        self._on_choice()
        return True

    def show_fits(self, layers) -> None:
        """Mark in the menu the bundled models the open image layers fit (each item's tooltip says
        what it needs and what it learnt from); for a scan none fits, say how to go on."""
        self._layers = list(layers)
        self.fits = {e.path: model_fit(e, self._layers) for e in self.entries if e.source == "bundled"}
        for i, entry in enumerate(self.entries):
            fit = self.fits.get(entry.path)
            self.combo.setItemText(i, f"{entry.label} {FITS}" if fit and fit.fits else entry.label)
            self.combo.setItemData(i, fit.note if fit else entry.path, Qt.ItemDataRole.ToolTipRole)
        none_fits = bool(self._layers) and bool(self.fits) and not any(f.fits for f in self.fits.values())
        self.no_fit.setText(ways_forward(self._layers) if none_fits else "")
        self.no_fit.setVisible(none_fits)

    def set_model_file(self, path: str, arch: str = "auto") -> None:
        """Choose a file as if picked with Browse."""
        self.chosen = True
        path = str(path)
        if path not in [e.path for e in self.entries]:
            self.entries.append(ModelEntry(path, "file", arch))
            self.combo.blockSignals(True)
            self.combo.addItem(self.entries[-1].label)
            self.combo.blockSignals(False)
        self.arch.blockSignals(True)
        self.arch.setCurrentText(arch)
        self.arch.blockSignals(False)
        self.combo.setCurrentIndex([e.path for e in self.entries].index(path))
        self._on_choice()

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model file", "", FILE_FILTER)
        if path:
            self.set_model_file(path)

    def _on_choice(self, *_) -> None:
        entry = self.entry
        reference = entry is not None and is_reference_checkpoint(entry.path)
        self.arch.setVisible(reference)
        self.arch_label.setVisible(reference)
        self.card = None
        if entry is None:
            self.problem = "No model chosen: pick a bundled or recent model, or Browse for a file."
            self.info.setText(self.problem)
        else:
            try:
                self.card = describe(entry.path, self.arch.currentText() if reference else "auto")
                self.problem = None
                self.info.setText(summary(self.card))
            except AutofocusError as exc:
                self.problem = str(exc)
                self.info.setText(f"<span style='color:#e66'>{exc}</span>")
        self.changed.emit()
