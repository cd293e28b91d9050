"""Compare: two models in one worker, grid view, disagreement, Dice table checked by hand, CSV."""

import csv

import numpy as np
from widget_helpers import PLUGIN, add_scan, make_model_file, run_and_wait

from napari_autofocus.analysis.metrics import dice
from napari_autofocus.widgets.compare import grid_cells, grid_of


def test_compare_fills_dice_table_and_exports_csv(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = add_scan(make_napari_viewer())
    a = make_model_file(tmp_path / "model_a.safetensors", "AFN2", seed=1)
    b = make_model_file(tmp_path / "model_b.safetensors", "AFN1", seed=2)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
    widget.add_model_file(a)
    widget.run()
    assert any("at least two models" in m for m in notes["error"])

    widget.add_model_file(b)
    assert widget.truth_combo.currentText() == "case ground truth"
    progress_seen = []
    widget.runner.progressed.connect(lambda d, t, what: progress_seen.append(what))
    run_and_wait(qtbot, widget)
    assert set(progress_seen) == {"Compare: model_a", "Compare: model_b"}
    assert grid_of(viewer).enabled
    # napari does not title its grid cells: the dock says which model is where, as napari places them
    layers = list(viewer.layers)
    for model in ("model_a", "model_b"):
        index = layers.index(viewer.layers[f"{model} (compare)"])
        row, column = grid_of(viewer).position(index, layers)
        assert grid_cells(viewer)[(row, column)] == [model]
    assert (
        widget.grid_label.text().startswith("Grid, left to right:") and "model_b" in widget.grid_label.text()
    )
    # each cell: the scan under that model's labels (the same array, no copy), the name as its title
    scan = viewer.layers["case [T1-like]"]  # the first channel the models read
    for title in ("model_a", "model_b", "model disagreement"):
        labels = viewer.layers[f"{title} (compare)" if title != "model disagreement" else title]
        backdrop = viewer.layers[f"{title} scan (compare)"]
        assert labels.name_overlay.visible and backdrop.data is scan.data
        at = layers.index(labels)
        assert grid_of(viewer).position(at, layers) == grid_of(viewer).position(at - 1, layers)
        assert layers[at - 1] is backdrop  # right under its labels
    assert grid_of(viewer).spacing > 0  # a frame of canvas colour round each cell
    assert not scan.visible and not viewer.layers["case ground truth"].visible  # no cells of their own
    assert len(grid_cells(viewer)) == 3
    la, lb = viewer.layers["model_a (compare)"].data, viewer.layers["model_b (compare)"].data
    np.testing.assert_array_equal(viewer.layers["model disagreement"].data > 0, la != lb)

    truth = viewer.layers["case ground truth"].data
    header = [widget.table.horizontalHeaderItem(c).text() for c in range(widget.table.columnCount())]
    assert header == ["model", "small lesion", "large lesion", "any lesion"]
    assert widget.table.item(0, 0).text() == "model_a"
    assert widget.table.item(0, 2).text() == f"{dice(la == 2, truth == 2):.3f}"
    assert widget.table.item(1, 3).text() == f"{dice(lb > 0, truth > 0):.3f}"
    assert len(widget.chart.figure.axes[0].patches) == 2 * 3

    out = tmp_path / "dice.csv"
    widget.export_csv(str(out))
    rows = list(csv.reader(out.open()))
    assert rows[0] == header
    assert abs(float(rows[2][1]) - dice(lb == 1, truth == 1)) < 1e-4

    run_and_wait(qtbot, widget)  # again: replaces its layers
    assert sum(layer.name == "model disagreement" for layer in viewer.layers) == 1
    widget.leave_button.click()  # one view again, with what the user had on screen
    assert not grid_of(viewer).enabled and scan.visible and viewer.layers["case [T2-like]"].visible
    assert not viewer.layers["model_a (compare)"].visible


def test_the_grid_reads_in_the_order_the_models_were_ticked(make_napari_viewer, qtbot, tmp_path):
    viewer = add_scan(make_napari_viewer())
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
    for i, arch in enumerate(("AFN2", "AFN1", "BASIC")):
        widget.add_model_file(make_model_file(tmp_path / f"m{i}_{arch}.safetensors", arch, seed=i))
    run_and_wait(qtbot, widget)
    cells = grid_cells(viewer)
    ordered = [cells[key] for key in sorted(cells)]
    assert ordered == [["m0_AFN2"], ["m1_AFN1"], ["m2_BASIC"], ["model disagreement"]]
    colours = viewer.layers["model disagreement"].colormap.map(np.arange(1, 3))
    assert (np.asarray(colours)[:, :3].max(axis=1) >= 0.99).all()  # bright, never dark red
