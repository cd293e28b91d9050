"""Run a job in a napari worker thread with activity-dock progress, a device status and Cancel.

The job is a plain function ``job(progress, status, cancel)``; ``progress(done, total)`` and
``status(text)`` may be called from the worker thread: they are relayed to the GUI thread by Qt
signals, where a :class:`napari.utils.progress` bar is updated. Errors become notifications, so a
failed or cancelled run leaves the viewer usable. A result is handed over on a turn of the event
loop after any garbage collection its new layers could set off (see :mod:`._garbage_collection`).
"""

from __future__ import annotations

import threading
import time
import traceback

from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from qtpy.QtCore import QObject, QTimer, Signal

from napari_autofocus.app.session import is_out_of_memory
from napari_autofocus.errors import AutofocusError, describe_os_error
from napari_autofocus.widgets import _common, _garbage_collection

NOTE_SEP = " · "
NOTHING = object()  # no outcome (yet): the job failed, was cancelled or is still running


def describe_progress(done: int, total: int, elapsed_s: float, first_part_s: float | None = None) -> str:
    """Where a run is and, once two parts have finished, how long the rest should take at the
    pace measured since the first part ended (the first one also loads the model and warms the
    kernels up, so it says little about the others; the engine's parts take about equal time)."""
    where = f"part {done} of {total}"
    if done < 2 or done >= total or first_part_s is None:
        return where
    left = (elapsed_s - first_part_s) / (done - 1) * (total - done)
    if left < 60:
        return f"{where}, about {max(1, round(left))} s left"
    return f"{where}, about {left / 60:.0f} min left"


class BackgroundRun(QObject):
    """One job at a time; ``succeeded(result)`` then ``ended()`` (also after errors or Cancel)."""

    progressed = Signal(int, int, str)
    progress_note = Signal(str)  # "part 3 of 12, about 40 s left", for the dock's status line
    status_changed = Signal(str)
    succeeded = Signal(object)
    ended = Signal()

    def __init__(self, parent=None, layers_per_result: int = 3) -> None:
        """``layers_per_result``: how many napari layers a result usually brings (a run's labels,
        then the explorer's first layer); 0 for jobs whose result adds none."""
        super().__init__(parent)
        self.layers_per_result = layers_per_result
        self.worker = None
        self.cancel_event = threading.Event()
        self._bars: dict[str, napari_progress] = {}
        self._started: dict[str, float] = {}
        self._first_part: dict[str, float] = {}  # seconds until each job's first part was done
        self.progressed.connect(self._show_progress)
        self.last_error: str | None = None
        self._outcome = NOTHING
        self._hand_over = QTimer(self)  # a child: never fires for a closed dock
        self._hand_over.setSingleShot(True)
        self._hand_over.setInterval(0)
        self._hand_over.timeout.connect(self._wrap_up)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, job, description: str) -> bool:
        """Start ``job`` unless one is running; returns whether it started."""
        if self.running:
            _common.warning("A run is already in progress; wait for it or press Cancel.")
            return False
        self.cancel_event = threading.Event()
        self.last_error = None
        self._description = description
        cancel = self.cancel_event

        def report(done: int, total: int, what: str = description) -> None:
            self.progressed.emit(done, total, what)

        def work():
            return job(report, self.status_changed.emit, cancel)

        self._outcome = NOTHING
        self.worker = create_worker(work, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.worker.start()
        return True

    def cancel(self) -> None:
        if self.running:
            self.cancel_event.set()
            self.status_changed.emit("cancelling…")

    def _show_progress(self, done: int, total: int, what: str) -> None:
        elapsed = time.monotonic() - self._started.setdefault(what, time.monotonic())
        if done >= 1:
            self._first_part.setdefault(what, elapsed)
        # the note before the bar: updating the bar may let the run's end be handled first
        self.progress_note.emit(describe_progress(done, total, elapsed, self._first_part.get(what)))
        bar = self._bars.get(what)
        if bar is None:
            bar = self._bars[what] = napari_progress(total=total, desc=what)
        if bar.total != total:
            bar.total = total
        if done > bar.n:
            bar.update(done - bar.n)

    def show_progress_in(self, label) -> None:
        """Append the progress note to ``label`` (its text up to the note is kept)."""

        def show(note: str) -> None:
            if self.running:  # a note that arrives after the end never gets onto "Done" or "cancelled"
                label.setText(f"{label.text().split(NOTE_SEP)[0]}{NOTE_SEP}{note}")

        self.progress_note.connect(show)

    def _failed(self, exc: Exception) -> None:
        from napari_autofocus.inference import Cancelled

        if isinstance(exc, Cancelled) or self.cancel_event.is_set():
            self._report_cancelled()
            return
        if is_out_of_memory(exc):
            message = (
                f"{self._description}: out of memory. Try the CPU device, close other programs, or crop the "
                "volume."
            )
            _common.error(message)
        elif isinstance(exc, AutofocusError):
            message = f"{self._description}: {exc}"
            _common.error(message)
        elif isinstance(exc, OSError):  # disk full, permission denied, read-only folder
            message = f"{self._description}: {describe_os_error(exc)}"
            _common.error(message)
        else:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
            message = f"{self._description} failed: {type(exc).__name__}: {exc}"
            _common.error(message)
        self.last_error = message

    def _report_cancelled(self) -> None:
        self.last_error = f"{self._description}: cancelled; nothing was added."
        _common.info(self.last_error)

    def _returned(self, outcome) -> None:
        self._outcome = outcome  # handed over once the worker has finished

    def _finished(self) -> None:
        """The worker is done: collect garbage first (this turn) if the result's layers could set
        a collection off, then hand the result over on the next turn."""
        adds = self.layers_per_result
        if self._outcome is not NOTHING and adds and _garbage_collection.full_collection_possible(adds):
            _garbage_collection.collect_now()
            self._hand_over.start()
            return
        self._wrap_up()

    def _wrap_up(self) -> None:
        outcome, self._outcome = self._outcome, NOTHING
        if outcome is not NOTHING and self.cancel_event.is_set():  # Cancel came before the hand-over
            self._report_cancelled()
        elif outcome is not NOTHING:
            self.succeeded.emit(outcome)
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        self._started.clear()
        self._first_part.clear()
        self.worker = None
        self.ended.emit()
