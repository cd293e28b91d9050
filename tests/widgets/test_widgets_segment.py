"""Segment widget: modality matching, outputs aligned with the input, Cancel, replacement, errors."""

import numpy as np
from widget_helpers import PLUGIN, add_scan, click, open_segment, run_and_wait

from napari_autofocus.app.results import RESULTS


def test_segment_adds_aligned_labels_with_class_names_and_attention(make_napari_viewer, qtbot, model_file):
    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    assert widget.mapping() == {"T1-like": "case [T1-like]", "T2-like": "case [T2-like]"}
    widget.probabilities.setChecked(True)
    run_and_wait(qtbot, widget)
    labels = viewer.layers["tiny_afn2 labels"]
    source = viewer.layers["case [T1-like]"]
    assert labels.data.shape == source.data.shape
    np.testing.assert_allclose(labels.scale, source.scale)
    np.testing.assert_allclose(labels.translate, source.translate)
    assert list(labels.features["class"]) == ["background", "small lesion", "large lesion"]
    result = RESULTS.of(labels)
    assert isinstance(labels.metadata["autofocus_result"], str)  # a key: the result stays out of the layer
    assert sorted(result.attention) == ["AF1", "AF2"]
    assert all(a.shape == (4, *source.data.shape) for a in result.attention.values())
    assert labels.metadata["autofocus"]["model"] == model_file
    assert labels.metadata["autofocus"]["device"] == "cpu" and labels.metadata["autofocus"]["mode"] == "whole"
    assert "nifti" in labels.metadata
    assert "tiny_afn2 p(large lesion)" in viewer.layers
    assert "Done on cpu" in widget.status.text()

    run_and_wait(qtbot, widget)  # again: replaces, does not pile up
    assert sum(layer.name.startswith("tiny_afn2 labels") for layer in viewer.layers) == 1

    # deleting the labels frees the result (model, inputs, attention): the widget does not keep it
    import gc
    import weakref

    kept = weakref.ref(widget.result)
    viewer.layers.remove("tiny_afn2 labels")
    gc.collect()
    assert widget.result is None and kept() is None


def test_cancel_stops_a_run_and_adds_nothing(make_napari_viewer, qtbot, model_file, notes):
    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    with qtbot.waitSignal(widget.run_finished, timeout=30000):
        click(qtbot, widget.run_button)
        assert widget.cancel_button.isEnabled()
        click(qtbot, widget.cancel_button)
    qtbot.waitUntil(lambda: not widget.runner.running)
    assert any("cancelled" in m for m in notes["info"])
    assert "tiny_afn2 labels" not in viewer.layers
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_mapping_is_editable_and_wrong_inputs_are_explained(make_napari_viewer, qtbot, model_file, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((20, 20, 20), np.float32), name="only one")
    widget = open_segment(viewer, model_file)
    assert "expects 2 input channel(s)" in widget.input_problem.text()
    click(qtbot, widget.run_button)
    assert any("expects 2 input channel(s)" in m for m in notes["error"])

    viewer.add_image(np.zeros((20, 20), np.float32), name="flat")
    widget.channel_combos["T1-like"].setCurrentText("only one")
    widget.channel_combos["T2-like"].setCurrentText("flat")
    assert "segment 3D volumes" in widget.input_problem.text()
    click(qtbot, widget.run_button)
    assert any("3D volumes" in m for m in notes["error"])
    assert not widget.runner.running


def test_no_model_and_bad_model_file_are_notified(make_napari_viewer, qtbot, tmp_path, notes, monkeypatch):
    from napari_autofocus.app import model_library

    monkeypatch.setattr(model_library, "BUNDLED_DIR", tmp_path / "no-models")  # nothing bundled
    viewer = add_scan(make_napari_viewer())
    _, widget = viewer.window.add_plugin_dock_widget("napari-autofocus", "Segment")
    assert widget.picker.entry is None
    click(qtbot, widget.run_button)
    assert any("No model chosen" in m for m in notes["error"])
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a model at all")
    widget.picker.set_model_file(str(bad))
    click(qtbot, widget.run_button)
    assert any("broken.safetensors" in m for m in notes["error"])


def test_unavailable_device_is_an_error_notification(make_napari_viewer, qtbot, model_file, notes):
    import torch

    if torch.cuda.is_available():
        return
    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    widget.device.setCurrentText("CUDA")
    run_and_wait(qtbot, widget)
    assert any("CUDA" in m for m in notes["error"])
    assert "tiny_afn2 labels" not in viewer.layers


def test_recent_models_remember_a_used_file(make_napari_viewer, qtbot, model_file):
    from napari_autofocus.app.model_library import recent_models

    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    run_and_wait(qtbot, widget)
    assert [e.path for e in recent_models()] == [model_file]
    _, second = viewer.window.add_plugin_dock_widget("napari-autofocus", "Segment")
    assert model_file in [e.path for e in second.picker.entries]


def test_crop_option_computes_the_foreground_box_or_the_whole_volume(make_napari_viewer, qtbot, model_file):
    viewer = add_scan(make_napari_viewer())
    for name in ("case [T1-like]", "case [T2-like]"):
        data = viewer.layers[name].data
        data[:4], data[:, :, 30:] = 0, 0  # a skull-stripped scan: zero around the head
    widget = open_segment(viewer, model_file)
    assert widget.crop.isChecked()
    run_and_wait(qtbot, widget)
    result = RESULTS.of(viewer.layers["tiny_afn2 labels"])
    assert result.crop_box == ((4, 32), (0, 36), (0, 30))
    assert np.isnan(result.attention["AF1"][:, :4].astype(np.float32)).all()
    assert "foreground box 4-32 x 0-36 x 0-30" in widget.status.text()
    assert viewer.layers["tiny_afn2 labels"].metadata["autofocus"]["computed_box"] == [
        [4, 32],
        [0, 36],
        [0, 30],
    ]

    widget.crop.setChecked(False)
    run_and_wait(qtbot, widget)
    result = RESULTS.of(viewer.layers["tiny_afn2 labels"])
    assert result.crop_box == ((0, 32), (0, 36), (0, 40))
    assert np.isfinite(result.attention["AF1"].astype(np.float32)).all()
    assert "foreground box" not in widget.status.text()


def test_cancel_during_a_run_stops_within_one_more_slab_and_keeps_the_previous_result(
    make_napari_viewer, qtbot, model_file, monkeypatch, notes
):
    import napari_autofocus.inference.predictor as predictor

    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    run_and_wait(qtbot, widget)
    before = widget.result
    labels_before = viewer.layers["tiny_afn2 labels"].data
    reports = {"before": [], "after": []}
    original = predictor.run_network

    def cancelled_after_the_first_slab(*args, progress=None, **kwargs):
        def report(done, total):
            reports["after" if widget.runner.cancel_event.is_set() else "before"].append((done, total))
            if done >= 1:
                widget.runner.cancel_event.set()  # as the Cancel button does, while the run is under way
            progress(done, total)

        return original(*args, progress=report, **kwargs)

    notes_seen = []
    widget.runner.progress_note.connect(notes_seen.append)
    monkeypatch.setattr(predictor, "run_network", cancelled_after_the_first_slab)
    run_and_wait(qtbot, widget)
    total = reports["before"][0][1]
    assert reports["before"] == [(0, total), (1, total)] and total > 2  # a bar before the first slab ends
    assert len(reports["after"]) <= 1  # at most one more slab ran after Cancel
    # no guess after the first part (it also loads and warms up): the estimate starts with the second
    assert notes_seen[:2] == [f"part 0 of {total}", f"part 1 of {total}"]
    assert widget.result is before and viewer.layers["tiny_afn2 labels"].data is labels_before
    assert any("cancelled" in m for m in notes["info"])


def test_inputs_that_do_not_suit_the_model_are_flagged_before_the_run(make_napari_viewer, qtbot, model_file):
    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    assert widget.mismatch.isHidden()  # the scan's two channels, matched by name: nothing to say
    t1 = viewer.layers["case [T1-like]"]
    viewer.add_image(t1.data.copy(), name="second volume", scale=t1.scale, translate=t1.translate)
    widget.channel_combos["T2-like"].setCurrentText("second volume")  # the same scan loaded twice
    assert not widget.mismatch.isHidden()
    assert "the same image is given as T1-like and T2-like" in widget.mismatch.text()
    widget.channel_combos["T2-like"].setCurrentText("case [T2-like]")
    assert widget.mismatch.isHidden()


def test_closing_and_reopening_docks_during_a_run_raises_nothing(
    make_napari_viewer, qtbot, model_file, monkeypatch
):
    errors = []
    monkeypatch.setattr("sys.excepthook", lambda *exc: errors.append(exc))
    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    _, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
    click(qtbot, widget.run_button)
    worker = widget.runner.worker
    assert worker is not None
    for name in ("Segment", "Attention explorer"):
        viewer.window.remove_dock_widget(viewer.window.dock_widgets[f"{name} ({PLUGIN})"].parent())
    again = open_segment(viewer, model_file)
    viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60000)
    qtbot.wait(200)  # let the finished run's signals arrive
    assert not errors, errors
    run_and_wait(qtbot, again)  # the reopened dock runs as usual
    assert "tiny_afn2 labels" in viewer.layers and not errors


def test_progress_note_estimates_the_rest_from_the_measured_pace():
    from napari_autofocus.widgets._background import describe_progress

    assert describe_progress(0, 12, 0.0) == "part 0 of 12"
    assert describe_progress(1, 12, 8.0, first_part_s=8.0) == "part 1 of 12"  # the first also warms up
    # the pace after the first part: 2 s per part, 9 left
    assert describe_progress(3, 12, 12.0, first_part_s=8.0) == "part 3 of 12, about 18 s left"
    assert describe_progress(2, 12, 70.0, first_part_s=10.0) == "part 2 of 12, about 10 min left"
    assert describe_progress(12, 12, 99.0, first_part_s=8.0) == "part 12 of 12"


def test_segment_offers_the_bundled_model_the_open_scan_fits_until_the_user_picks_one(
    make_napari_viewer, tmp_path, monkeypatch
):
    from widget_helpers import make_model_file

    import napari_autofocus.app.model_library as library
    from napari_autofocus.nets import build_network, save_model

    bundled = tmp_path / "bundled"
    bundled.mkdir()
    brain_names = ["T1 (MNI152 template)", "T1c (simulated)", "T2 (simulated)", "FLAIR (simulated)"]
    save_model(
        build_network("BASIC", 4, 4, channels=(4,) * 8),
        bundled / "A_brain.safetensors",
        modalities=brain_names,
    )
    make_model_file(bundled / "B_phantom.safetensors")
    monkeypatch.setattr(library, "BUNDLED_DIR", bundled)

    viewer = add_scan(make_napari_viewer())  # two channels named T1-like and T2-like
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.picker.path.endswith("B_phantom.safetensors") and not widget.problems()

    brain = make_napari_viewer()
    for name in brain_names:
        brain.add_image(
            np.zeros((8, 8, 8), np.float32), name=f"case [{name}]", metadata={"channel_name": name}
        )
    _, widget = brain.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert widget.picker.path.endswith("A_brain.safetensors") and not widget.problems()

    widget.picker.combo.setCurrentIndex(1)
    widget.picker.combo.activated.emit(1)  # the user's own choice is kept whatever is opened next
    brain.add_image(np.zeros((8, 8, 8), np.float32), name="extra")
    assert widget.picker.path.endswith("B_phantom.safetensors")


def test_the_model_menu_marks_what_fits_and_a_one_channel_scan_is_told_the_ways_forward(
    make_napari_viewer, qtbot, notes
):
    from napari_autofocus.widgets.model_picker import FITS

    viewer = add_scan(make_napari_viewer())  # the phantom's two channels: the phantom models fit
    # the plugin's own outputs (an explorer map, a probability) and RGB images are not scans
    viewer.add_image(np.zeros((4, 4, 4, 4), np.uint8), rgb=True, name="AF1 · blend")
    viewer.add_image(
        np.zeros((4, 4, 4), np.float32), name="p(x)", metadata={"autofocus": {"owner": "segment"}}
    )
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    assert list(widget.channel_combos) and all(
        c.findText("AF1 · blend") < 0 and c.findText("p(x)") < 0 for c in widget.channel_combos.values()
    )
    items = [widget.picker.combo.itemText(i) for i in range(widget.picker.combo.count())]
    fitting = [text for text in items if FITS in text]
    assert fitting and all("phantom" in text for text in fitting)
    assert any("brain" in text and FITS not in text for text in items)
    assert not widget.picker.no_fit.isVisibleTo(widget)
    tip = widget.picker.combo.itemData(items.index(fitting[0]), 3)  # Qt.ToolTipRole
    assert "2 channel(s)" in tip and "synthetic phantoms" in tip

    t1 = make_napari_viewer()  # a real T1: one channel, which no bundled model is made for
    t1.add_image(np.ones((12, 12, 12), np.float32), name="mni152_t1")
    _, widget = t1.window.add_plugin_dock_widget(PLUGIN, "Segment")
    items = [widget.picker.combo.itemText(i) for i in range(widget.picker.combo.count())]
    assert items and not any(FITS in text for text in items)
    message = widget.picker.no_fit.text()
    assert widget.picker.no_fit.isVisibleTo(widget) and "No bundled model is made for this scan" in message
    for way in ("python -m src_training train", ".pth.tar", "File > Open Sample > Autofocus"):
        assert way in message
    click(qtbot, widget.run_button)
    assert notes["error"] and "Three ways forward" in notes["error"][-1]


def test_closing_segment_during_a_run_still_adds_the_result_and_says_so(
    make_napari_viewer, qtbot, model_file, notes
):
    import gc

    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    click(qtbot, widget.run_button)
    worker = widget.runner.worker
    viewer.window.remove_dock_widget(viewer.window.dock_widgets[f"Segment ({PLUGIN})"].parent())
    del widget  # napari keeps no reference to a closed dock's widget: collected, it would crash
    gc.collect()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=60000)
    qtbot.waitUntil(lambda: "tiny_afn2 labels" in viewer.layers, timeout=10000)
    assert any("dock was closed during the run; the result was added" in m for m in notes["info"])


def test_the_status_line_ends_with_how_the_run_ended(make_napari_viewer, qtbot, model_file):
    viewer = add_scan(make_napari_viewer())
    widget = open_segment(viewer, model_file)
    run_and_wait(qtbot, widget)
    qtbot.wait(100)
    text = widget.status.text()
    assert text.startswith("Done on") and "part" not in text and "left" not in text
    widget.runner.progress_note.emit("part 3 of 12, about 20 s left")  # a late note from the last run
    assert widget.status.text() == text

    import threading

    started = threading.Event()
    release = threading.Event()

    def slow(progress, status, cancel):
        progress(1, 4)
        started.set()
        release.wait(10)
        progress(2, 4)
        from napari_autofocus.inference import Cancelled

        raise Cancelled("cancelled")

    widget.controls.start(slow, "Segment (slow)", "Running…")
    qtbot.waitUntil(started.is_set, timeout=5000)
    widget.cancel()
    release.set()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=10000)
    qtbot.wait(100)
    assert "cancelled" in widget.status.text() and "part" not in widget.status.text()
