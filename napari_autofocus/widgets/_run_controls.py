"""Run, Cancel, device and status of a dock whose work runs in the background: one implementation
for Segment, Compare and Counterfactuals, so they start, report, cancel and recover the same way."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_autofocus.widgets import _common
from napari_autofocus.widgets._background import BackgroundRun

DEVICES = ("auto", "CPU", "CUDA", "MPS")
# Docks with a run in progress. Closing a dock detaches its widget (napari: setParent(None)); held
# here, it is not collected under its running worker (a crash) and still hands the result over.
_RUNNING: set = set()


class RunControls(QWidget):
    """``succeeded(outcome)`` when a job returns; ``ended()`` after every job (errors and Cancel too),
    once the buttons are usable again and the status says how it ended."""

    succeeded = Signal(object)
    ended = Signal()

    def __init__(self, run_text: str, idle_text: str, with_device: bool = True) -> None:
        super().__init__()
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.device.setToolTip("auto: CUDA, then Apple MPS, then CPU")
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.status = QLabel(idle_text)
        self.status.setWordWrap(True)
        self.runner = BackgroundRun(self)
        self.runner.show_progress_in(self.status)
        self._dock_widget = None  # the plugin widget (the dock's content) while a run is going on
        self._description = ""
        self._handed_over = False

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        if with_device:
            form = QFormLayout()
            form.addRow("device", self.device)
            layout.addLayout(form)
        else:  # kept (hidden) so callers can read device_name either way
            self.device.setParent(self)
            self.device.hide()
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.status)

        self.cancel_button.clicked.connect(self.runner.cancel)
        self.runner.status_changed.connect(self._on_status)
        self.runner.succeeded.connect(self._on_succeeded)
        self.runner.ended.connect(self._on_ended)

    @property
    def device_name(self) -> str:
        """The chosen device as the engine names it ("auto", "cpu", "cuda", "mps")."""
        return self.device.currentText().lower()

    def start(self, job, description: str, running_text: str) -> bool:
        """Start ``job(progress, status, cancel)`` unless one is running; returns whether it started."""
        if not self.runner.start(job, description):
            return False
        self._dock_widget, self._description, self._handed_over = self._plugin_widget(), description, False
        _RUNNING.add(self._dock_widget)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(running_text)
        return True

    def _on_status(self, text: str) -> None:
        """The worker names its device ("cpu") or says what it does ("cancelling…")."""
        self.status.setText(text if text.endswith("…") else f"Running on {text}…")

    def _plugin_widget(self) -> QWidget:
        """The widget napari docked (this one's ancestor just under the dock)."""
        widget = self
        while widget.parentWidget() is not None and not isinstance(widget.parentWidget(), QDockWidget):
            widget = widget.parentWidget()
        return widget

    def _on_succeeded(self, outcome) -> None:
        self._handed_over = True
        self.succeeded.emit(outcome)

    def _on_ended(self) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.runner.last_error:
            self.status.setText(self.runner.last_error)
        closed = self._dock_widget is not None and self._dock_widget.parentWidget() is None
        if closed and self._handed_over:
            _common.info(f"{self._description}: its dock was closed during the run; the result was added.")
        _RUNNING.discard(self._dock_widget)
        self._dock_widget = None
        self.ended.emit()
