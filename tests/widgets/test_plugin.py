"""The plugin inside a real napari viewer: reader preference, sample data, widgets, demo screenshot."""

import nibabel as nib
import numpy as np

from napari_autofocus.__main__ import DEMO_WIDGETS, PLUGIN, open_demo


def test_nifti_opens_with_our_reader_even_without_naming_the_plugin(make_napari_viewer, tmp_path):
    from napari_autofocus._reader import prefer_this_reader

    viewer = make_napari_viewer()
    prefer_this_reader()  # what every entry point of the plugin does
    path = tmp_path / "scan.nii.gz"
    nib.save(
        nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), np.diag([2, 3, 4, 1])), str(path)
    )
    layers = viewer.open(str(path), plugin=None)
    assert len(layers) == 1
    assert layers[0].data.shape == (5, 4, 3)
    assert tuple(layers[0].scale) == (4.0, 3.0, 2.0)


def test_sample_loads_aligned_channels_and_ground_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    names = [layer.name for layer in viewer.layers]
    assert names == ["phantom_09000 [T1-like]", "phantom_09000 [T2-like]", "phantom_09000 ground truth"]
    shapes = {layer.data.shape for layer in viewer.layers}
    assert shapes == {(96, 96, 96)}
    assert len({tuple(layer.scale) for layer in viewer.layers}) == 1
    assert len({tuple(layer.translate) for layer in viewer.layers}) == 1
    truth = viewer.layers["phantom_09000 ground truth"]
    assert set(np.unique(truth.data)) == {0, 1, 2}


def test_brain_sample_is_real_anatomy_with_four_channels_and_brats_labels(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "brain")
    names = [layer.name for layer in viewer.layers]
    assert names == [
        "brain_09000 [T1 (MNI152 template)]", "brain_09000 [T1c (simulated)]", "brain_09000 [T2 (simulated)]",
        "brain_09000 [FLAIR (simulated)]", "brain_09000 ground truth",
    ]  # fmt: skip
    assert {layer.data.shape for layer in viewer.layers} == {(94, 116, 98)}  # (S, P, L) at 2 mm
    assert {tuple(layer.scale) for layer in viewer.layers} == {(2.0, 2.0, 2.0)}
    truth = viewer.layers["brain_09000 ground truth"]
    assert set(np.unique(truth.data)) == {0, 1, 2, 3}


def test_scan_info_widget_follows_the_selection(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Scan info")
    viewer.layers.selection.active = viewer.layers["phantom_09000 [T2-like]"]
    assert "T2-like" in widget.label.text()
    assert "voxel size (mm): 1 x 1 x 1" in widget.label.text()
    viewer.layers.selection.active = viewer.layers["phantom_09000 ground truth"]
    assert "label voxels: 0:" in widget.label.text()


def test_demo_window_renders_the_sample_with_the_plugin_docked(make_napari_viewer, tmp_path):
    from napari_autofocus.__main__ import wait_for_run
    from napari_autofocus.app.model_library import bundled_models

    viewer = make_napari_viewer(show=True)
    segment = open_demo(viewer)
    wait_for_run(segment, seconds=120)  # about 15 s here: well inside the limit, and said if not
    assert not segment.runner.running, "the demo's segmentation took more than 120 s"
    assert set(DEMO_WIDGETS) <= {key.split(" (")[0] for key in viewer.window.dock_widgets}
    assert bundled_models(), "sample_data/models/ should hold the demo's model"
    names = [layer.name for layer in viewer.layers]  # the demo segmented the brain sample with it
    assert "AFN6_brain labels" in names, names
    assert "AF1 · blend" in names and viewer.layers["AF1 · blend"].visible, names  # the attention colours
    labels = viewer.layers["AFN6_brain labels"]
    truth = viewer.layers["brain_09000 ground truth"]
    assert labels.data.shape == truth.data.shape and tuple(labels.scale) == tuple(truth.scale)
    from napari_autofocus.analysis.metrics import dice

    assert dice(np.asarray(labels.data) > 0, np.asarray(truth.data) > 0) > 0.8  # a trained model, not noise
    # a first picture that reads at once: one label layer (outlines, on top), the chart filled for a
    # voxel inside a lesion, the structure chart on the ground truth
    assert not truth.visible and labels.contour == 1 and viewer.layers[-1] is labels
    explorer = next(w for k, w in viewer.window.dock_widgets.items() if k.startswith("Attention explorer"))
    assert "enhancing rim" in explorer.readout.text()  # the voxel in the tumour the demo points at
    assert len(explorer.voxel_chart.figure.axes[0].patches) == 6 * 4  # six layers x four rates
    assert explorer.classes_combo.currentText() == truth.name
    z = int(round(truth.world_to_data(viewer.dims.point)[0]))
    assert (np.asarray(truth.data)[z] > 0).sum() == (np.asarray(truth.data) > 0).sum(axis=(1, 2)).max()
    from PIL import Image

    from napari_autofocus.__main__ import save_window

    save_window(viewer, tmp_path / "demo.png")  # what `demo --screenshot` writes after the run
    window = np.asarray(Image.open(tmp_path / "demo.png").convert("RGB")).astype(float)
    assert window.shape[0] > 400 and window.std() > 10
    canvas = viewer.screenshot(canvas_only=True, flash=False)
    # the scan is drawn: the canvas is neither black nor uniform, and shows grey tissue
    rgb = canvas[..., :3].astype(float)
    assert rgb.std() > 10
    assert (rgb.mean(axis=-1) > 60).mean() > 0.1  # the brain fills less of the canvas than its box


def test_bundled_models_are_offered_in_segment_and_compare(make_napari_viewer):
    """The phantom models (AFN6 and the paper's baselines) and the brain models ship and are listed."""
    from napari_autofocus.app.model_library import bundled_models
    from napari_autofocus.nets.card import read_card

    paths = [e.path for e in bundled_models()]
    assert {read_card(p).arch for p in paths} == {"AFN6", "BASIC", "ASPP_C", "ASPP_S", "DM"}
    brain = {read_card(p).arch for p in paths if read_card(p).in_channels == 4}
    assert brain == {"AFN6", "BASIC", "ASPP_C", "ASPP_S", "DM"}  # trained on the brain phantom
    for path in paths:
        held_out = read_card(path).metrics["held_out"]  # every card carries its held-out numbers
        assert 0.5 < held_out["dice"]["mean"]["mean"] <= 1.0  # held-out seeds: 7000.. phantoms, 5000.. brains
        assert "7000" in held_out["data"] or "5000" in held_out["data"]
    viewer = make_napari_viewer()
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert set(paths) <= {e.path for e in segment.picker.entries}
    _, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
    listed = {compare.models.item(i).data(256) for i in range(compare.models.count())}  # UserRole
    assert set(paths) <= listed


def test_demo_command_writes_a_screenshot(tmp_path, monkeypatch, capsys):
    """The command's own path: arguments, a window on the display, the PNG. The segmentation it
    starts is the one the test above checks, so it is left out here."""
    from napari_autofocus.__main__ import main
    from napari_autofocus.widgets.segment import SegmentWidget

    monkeypatch.setattr(SegmentWidget, "run", lambda self: None)
    out = tmp_path / "demo.png"
    assert main(["demo", "--screenshot", str(out)]) == 0
    assert f"saved {out}" in capsys.readouterr().out
    from PIL import Image

    image = np.asarray(Image.open(out).convert("RGB")).astype(float)
    assert image.shape[0] > 600 and image.shape[1] > 1000
    assert image.std() > 10


def test_every_dock_scrolls_instead_of_growing_the_window(make_napari_viewer):
    """All six docks at once fit a 1280x800 screen: each one's content sits in a scroll area."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    docks = ["Scan info", "Segment", "Attention explorer", "Counterfactuals", "Compare models", "Export"]
    for name in docks:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        assert widget.scroll_area.widget() is not None, name
        assert widget.minimumSizeHint().height() < 200, (name, widget.minimumSizeHint().height())


def test_every_control_of_every_dock_has_a_tooltip(make_napari_viewer):
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLineEdit, QListWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")
    docks = ["Scan info", "Segment", "Attention explorer", "Counterfactuals", "Compare models", "Export"]
    missing = []
    for name in docks:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        for kind in (QAbstractButton, QComboBox, QLineEdit, QListWidget):
            for control in widget.findChildren(kind):
                if control.isVisibleTo(widget) and not control.toolTip() and not control.parent().toolTip():
                    missing.append(
                        f"{name}: {type(control).__name__} {getattr(control, 'text', lambda: '')()!r}"
                    )
    assert not missing, missing
