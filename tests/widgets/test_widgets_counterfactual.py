"""Counterfactuals: forcing a rate changes the labels, the changed voxels and Dice change are shown."""

import numpy as np
from widget_helpers import PLUGIN, add_scan, open_segment, run_and_wait

from napari_autofocus.analysis.metrics import dice


def test_forcing_one_rate_changes_labels_and_reports_dice(make_napari_viewer, qtbot, model_file, notes):
    viewer = add_scan(make_napari_viewer())
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Counterfactuals")
    widget.run()
    assert any("run Segment first" in m for m in notes["error"])

    segment = open_segment(viewer, model_file)
    run_and_wait(qtbot, segment)
    original = viewer.layers["tiny_afn2 labels"].data.copy()
    assert widget.result_combo.currentText() == "tiny_afn2 labels"
    assert widget.reference_combo.currentText() == "case ground truth"
    widget.layer_combo.setCurrentText("AF2")
    assert [widget.mode_combo.itemText(i) for i in range(widget.mode_combo.count())] == [
        "uniform attention",
        "only r=2",
        "only r=6",
        "only r=10",
        "only r=14",
    ]
    widget.mode_combo.setCurrentText("only r=14")
    run_and_wait(qtbot, widget)
    changed = viewer.layers["tiny_afn2 changed voxels"].data
    modified = viewer.layers["tiny_afn2 counterfactual labels"].data
    assert changed.sum() > 0
    np.testing.assert_array_equal(changed.astype(bool), modified != original)
    truth = viewer.layers["case ground truth"].data
    before = dice(original == 2, truth == 2)
    after = dice(modified == 2, truth == 2)
    assert widget.table.item(1, 0).text() == "large lesion"
    assert widget.table.item(1, 1).text() == f"{before:.3f}"
    assert widget.table.item(1, 2).text() == f"{after:.3f}"
    assert "voxel(s) changed label" in widget.status.text()
    # both new layers on the canvas; the changed voxels in a colour no class is drawn in
    changed_layer = viewer.layers["tiny_afn2 changed voxels"]
    assert changed_layer.visible and viewer.layers["tiny_afn2 counterfactual labels"].visible
    mark = np.asarray(changed_layer.colormap.map(np.array([1])))[0, :3]
    classes = np.asarray(viewer.layers["tiny_afn2 labels"].colormap.map(np.arange(1, 3)))[:, :3]
    assert np.linalg.norm(classes - mark, axis=1).min() > 0.4
    # the table reads without a horizontal scrollbar in a narrow dock (its last column is Δ Dice)
    header = [widget.table.horizontalHeaderItem(i).text() for i in range(widget.table.columnCount())]
    assert header[-1] == "Δ Dice" and "ground truth" in widget.reference_label.text()
    assert sum(widget.table.columnWidth(i) for i in range(widget.table.columnCount())) < 300
    # the original result is untouched and the override was removed from the model
    np.testing.assert_array_equal(viewer.layers["tiny_afn2 labels"].data, original)
    assert all(getattr(m, "attention_override", None) is None for m in segment.result.model.modules())

    widget.reference_combo.setCurrentText("(none)")
    widget.mode_combo.setCurrentText("uniform attention")
    run_and_wait(qtbot, widget)
    assert widget.report.reference == "original prediction"
    assert widget.table.item(0, 1).text() == "1.000"
    assert sum(layer.name == "tiny_afn2 changed voxels" for layer in viewer.layers) == 1
