"""Compare models: run several on the same volume, view them side by side, score them against truth."""

from __future__ import annotations

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QWidget,
)

from napari_autofocus._reader import prefer_this_reader
from napari_autofocus.app.comparison import plan_comparison, run_comparison
from napari_autofocus.app.model_library import available_models, model_name
from napari_autofocus.app.placement import Placement
from napari_autofocus.errors import AutofocusError
from napari_autofocus.widgets import _charts, _common, _result_layers, _table, _tips
from napari_autofocus.widgets._run_controls import RunControls
from napari_autofocus.widgets.model_picker import FILE_FILTER

OWNER = "compare"
DISAGREEMENT = "model disagreement"
BACKDROP = "scan under the labels"  # the tag kind of each cell's copy of the scan (same array)
CELL_GAP = 0.04  # the grid's spacing, a fraction of a cell: the canvas colour frames each cell


def grid_of(viewer):
    """The grid model: ``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def grid_cells(viewer) -> dict[tuple[int, int], list[str]]:
    """(row, column) -> names of the layers napari draws in that cell of its grid (visible only;
    the scan under each model's labels is left out: every cell has one)."""
    grid, layers = grid_of(viewer), list(viewer.layers)
    cells: dict[tuple[int, int], list[str]] = {}
    for index, layer in enumerate(layers):
        if (layer.metadata.get(_result_layers.TAG) or {}).get("kind") == BACKDROP:
            continue
        try:
            row, column = grid.position(index, layers)
        except TypeError:  # napari before 0.9 took the number of layers
            row, column = grid.position(index, len(layers))
        if row >= 0 and layer.visible:
            cells.setdefault((int(row), int(column)), []).append(layer.name.removesuffix(" (compare)"))
    return cells


def grid_note(viewer) -> str:
    """Which model is in which cell of the grid, row by row (napari does not title its cells)."""
    cells = grid_cells(viewer)
    if not cells:
        return ""
    rows = sorted({r for r, _ in cells})
    lines = []
    for r in rows:
        names = [" + ".join(cells[key]) for key in sorted(k for k in cells if k[0] == r)]
        lines.append(f"row {r + 1}: " + " | ".join(names))
    return "Grid, left to right:\n" + "\n".join(lines)


DISAGREEMENT_COLOURS = ((1.0, 0.65, 0.0), (1.0, 0.25, 0.2), (1.0, 0.2, 1.0), (1.0, 1.0, 1.0))


def disagreement_colormap(models: int) -> DirectLabelColormap:
    """Bright, warmer the more models disagree (0, all agree: clear); never napari's dark reds."""
    colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for value in range(1, max(models, 2)):
        colours[value] = (*DISAGREEMENT_COLOURS[min(value, len(DISAGREEMENT_COLOURS)) - 1], 1.0)
    return DirectLabelColormap(color_dict=colours)


class CompareWidget(QWidget):
    run_finished = Signal()

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        prefer_this_reader()
        self.viewer = napari_viewer
        self.table_data = None
        self.models = QListWidget()
        self.models.setMaximumHeight(110)
        self.add_button = QPushButton("Add model file…")
        self.truth_combo = QComboBox()
        self.controls = RunControls("Run all", "Tick two or more models; each runs on the same image layers.")
        self.device, self.run_button, self.cancel_button = (
            self.controls.device,
            self.controls.run_button,
            self.controls.cancel_button,
        )
        self.status, self.runner = self.controls.status, self.controls.runner
        self.grid_label = QLabel()  # which model sits in which grid cell
        self.grid_label.setWordWrap(True)
        self.grid_label.setToolTip("napari's grid shows one layer per cell; this says which is where")
        self.table = _table.make_table()
        self.chart = _charts.ChartCanvas(4.0, 3.0)
        self.csv_button = QPushButton("Export table as CSV…")
        self.csv_button.setEnabled(False)
        self.leave_button = QPushButton("Back to one view")
        self.leave_button.setToolTip("Leave the grid: the layers hidden for it come back")
        self.leave_button.setEnabled(False)
        self._hidden = []  # layers the grid hid, shown again by "Back to one view"

        form = QFormLayout()
        form.addRow("ground truth", self.truth_combo)
        layout = _common.scroll_body(self)
        layout.addWidget(QLabel("models"))
        layout.addWidget(self.models)
        layout.addWidget(self.add_button)
        layout.addLayout(form)
        layout.addWidget(self.controls)
        layout.addWidget(self.grid_label)
        layout.addWidget(self.leave_button)
        layout.addWidget(self.table)
        layout.addWidget(self.chart)
        layout.addWidget(self.csv_button)

        for entry in available_models():
            self.add_model_file(entry.path, checked=False)
        _tips.apply(self, "compare")
        self.add_button.clicked.connect(self._browse)
        self.run_button.clicked.connect(self.run)
        self.csv_button.clicked.connect(self._save_csv)
        self.leave_button.clicked.connect(self.leave_grid)
        self.controls.succeeded.connect(self._on_done)
        self.controls.ended.connect(self.run_finished.emit)
        _common.watch_layers(napari_viewer, self._refresh)
        _common.watch_layers(napari_viewer, self._refresh_grid_note)
        # hiding or showing a layer moves the others between grid cells
        for layer in napari_viewer.layers:
            layer.events.visible.connect(self._refresh_grid_note)
        napari_viewer.layers.events.inserted.connect(
            lambda event: event.value.events.visible.connect(self._refresh_grid_note)
        )
        self._refresh()

    def add_model_file(self, path: str, checked: bool = True) -> None:
        for i in range(self.models.count()):
            if self.models.item(i).data(Qt.ItemDataRole.UserRole) == str(path):
                self.models.item(i).setCheckState(
                    Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked
                )
                return
        item = QListWidgetItem(model_name(path))
        item.setData(Qt.ItemDataRole.UserRole, str(path))
        item.setToolTip(str(path))
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.models.addItem(item)

    def chosen(self) -> list[str]:
        return [
            self.models.item(i).data(Qt.ItemDataRole.UserRole)
            for i in range(self.models.count())
            if self.models.item(i).checkState() == Qt.CheckState.Checked
        ]

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add a model file", "", FILE_FILTER)
        if path:
            self.add_model_file(path)

    def _refresh(self, *_) -> None:
        names = [_common.NONE] + [layer.name for layer in _common.truth_layers(self.viewer)]
        _common.set_items(self.truth_combo, names, default=names[1] if len(names) > 1 else None)

    def run(self) -> None:
        layers = [_common.layer_info(layer) for layer in _common.image_layers(self.viewer)]
        try:
            plan = plan_comparison(self.chosen(), layers)
        except AutofocusError as exc:
            _common.error(str(exc))
            return
        placement = Placement.of_layer(self.viewer.layers[plan[0].layers[0]])
        inputs = {p.layers: [np.asarray(self.viewer.layers[n].data) for n in p.layers] for p in plan}
        device = self.controls.device_name
        truth_name = self.truth_combo.currentText()
        truth = np.asarray(self.viewer.layers[truth_name].data) if truth_name in self.viewer.layers else None

        def job(progress, status, cancel):
            return run_comparison(plan, inputs, placement, device, truth, progress, status, cancel)

        self.controls.start(job, f"Compare {len(plan)} models", f"Running {len(plan)} models…")

    def _on_done(self, outcome) -> None:
        results, disagree, table = outcome.results, outcome.disagreement, outcome.table
        self.show_grid(results, disagree)
        self.table_data = table
        share = float(np.count_nonzero(disagree)) / disagree.size
        self.status.setText(f"{len(results)} models; they disagree on {100 * share:.1f}% of voxels.")
        if table is None:
            _table.fill(self.table, ["model"], [[r.name] for r in results])
            self.chart.message("Open a ground-truth labels layer to score the models.")
            self.csv_button.setEnabled(False)
            return
        _table.fill(self.table, ["model", *table.columns], [[m, *v] for m, v in table.rows])
        _charts.draw_dice_bars(self.chart, table)
        self.csv_button.setEnabled(True)

    def show_grid(self, results, disagree) -> None:
        """One grid cell per model (and one for the disagreement): the scan, that model's labels on
        it, the model's name as the cell's title, a gap around each cell, the view fitted. The
        other layers are hidden while the grid is on; "Back to one view" shows them again."""
        _result_layers.remove_outputs(self.viewer, OWNER)
        scan = self._scan_layer(results[0])
        self._hidden = self._hidden or [x for x in self.viewer.layers if x.visible]
        for layer in self._hidden:
            layer.visible = False
        # the grid fills its cells from the top of the layer list: the disagreement goes in first
        self._add_backdrop(scan, results[0], DISAGREEMENT)
        layer = self.viewer.add_labels(
            disagree,
            name=DISAGREEMENT,
            metadata=_result_layers.base_metadata(results[0], OWNER, "disagreement"),
            colormap=disagreement_colormap(len(results)),
            opacity=0.9,
            **_result_layers.placement(results[0]),
        )
        layer.metadata[_result_layers.TAG]["model"] = None
        titled = [layer]
        for result in reversed(results):  # so that the first model's cell comes first
            self._add_backdrop(scan, result, result.name)
            titled.append(
                _result_layers.add_labels(self.viewer, result, OWNER, name=f"{result.name} (compare)")
            )
        for layer in titled:
            layer.name_overlay.visible = True
        grid = grid_of(self.viewer)
        grid.stride = -2  # from the top of the layer list: (labels, scan) per cell, first model first
        grid.spacing = CELL_GAP
        grid.enabled = True
        self.viewer.reset_view()
        self.leave_button.setEnabled(True)
        self._refresh_grid_note()

    def _scan_layer(self, result):
        name = result.input_layers[0] if result.input_layers else None
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def _add_backdrop(self, scan, result, title: str) -> None:
        """A view of the scan (the same array, no copy) for one cell, in the scan's own contrast."""
        if scan is None:
            return
        metadata = _result_layers.base_metadata(result, OWNER, BACKDROP)
        metadata[_result_layers.TAG]["model"] = None
        self.viewer.add_image(
            scan.data,
            name=f"{title} scan (compare)",
            metadata=metadata,
            colormap="gray",
            contrast_limits=tuple(scan.contrast_limits),
            **_result_layers.placement(result),
        )

    def leave_grid(self) -> None:
        """One view again: the grid off, the comparison's layers hidden, the others back."""
        grid_of(self.viewer).enabled = False
        for layer in self.viewer.layers:
            if (layer.metadata.get(_result_layers.TAG) or {}).get("owner") == OWNER:
                layer.visible = False
        for layer in self._hidden:
            if layer in self.viewer.layers:
                layer.visible = True
        self._hidden = []
        self.leave_button.setEnabled(False)
        self._refresh_grid_note()

    def _refresh_grid_note(self, *_) -> None:
        """Which model is in which grid cell, while the grid is on (layers added or removed move them)."""
        on = bool(grid_of(self.viewer).enabled) and bool(_common.result_layers(self.viewer))
        self.grid_label.setText(grid_note(self.viewer) if on else "")

    def _save_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save Dice table", "dice.csv", "CSV (*.csv)")
        if path:
            self.export_csv(path)

    def export_csv(self, path: str) -> None:
        if self.table_data is None:
            _common.error("No Dice table yet: run the comparison with a ground-truth layer.")
            return
        written = self.table_data.to_csv(path)
        _common.info(f"Saved the Dice table to {written}.")
