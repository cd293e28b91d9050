"""Attention explorer: colour layers per rate, derived maps, voxel readout, charts, no re-runs."""

import numpy as np
from widget_helpers import PLUGIN, add_scan, open_segment, run_and_wait

from napari_autofocus.analysis.explorer_maps import rate_hue


def _segmented(make_napari_viewer, qtbot, model_file, monkeypatch):
    import napari_autofocus.inference.predictor as predictor

    calls = []
    original = predictor.run_network

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(predictor, "run_network", counting)
    viewer = add_scan(make_napari_viewer())
    segment = open_segment(viewer, model_file)
    run_and_wait(qtbot, segment)
    _, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
    settle(qtbot, explorer)
    return viewer, explorer, calls


def settle(qtbot, explorer) -> None:
    """Wait for the layers the explorer adds one per turn of the event loop."""
    qtbot.waitUntil(lambda: not explorer.building, timeout=30000)


def test_explorer_shows_k_colour_layers_per_autofocus_layer_without_rerunning(
    make_napari_viewer, qtbot, model_file, monkeypatch
):
    viewer, explorer, calls = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    assert explorer.result_combo.currentText() == "tiny_afn2 labels"
    assert explorer.checked(explorer.layer_list) == ["AF1"]
    # the default view: one blended colour layer per autofocus layer, the rates named in a legend
    blend = viewer.layers["AF1 · blend"]
    assert blend.rgb and blend.visible and blend.data.dtype == np.uint8
    weights_a = explorer.result.attention["AF1"][:, 16, 18, 20].astype(np.float32)
    hues = np.array([rate_hue(k) for k in range(4)], np.float32)
    np.testing.assert_allclose(blend.data[16, 18, 20, :3] / 255, weights_a @ hues, atol=1 / 255)
    assert not (blend.data[..., :3] >= 250).all(axis=-1).any()  # no voxel is washed to white
    assert (blend.data[..., 3] == 255).all()  # opaque where computed (this scan's noise: everywhere)
    assert "r=14" in explorer.legend.text() and viewer.canvas.overlays.text.visible
    assert "red r=14" in viewer.canvas.overlays.text.text
    assert [n.name for n in viewer.layers if n.metadata.get("autofocus", {}).get("owner") == "explorer"] == [
        "AF1 · blend"
    ]  # few layers: the other maps on demand
    explorer.map_boxes["arg-max rate"].setChecked(True)
    settle(qtbot, explorer)
    argmax = viewer.layers["AF1 · arg-max rate"]
    assert set(np.unique(argmax.data)) <= {0, 2, 6, 10, 14}  # hovering shows the rate itself
    explorer.map_boxes["weights"].setChecked(True)
    settle(qtbot, explorer)
    names = [layer.name for layer in reversed(viewer.layers)]  # as the layer list reads, top first
    weights = [n for n in names if n.startswith("AF1 · r=")]
    assert weights == ["AF1 · r=2", "AF1 · r=6", "AF1 · r=10", "AF1 · r=14"]
    layer = viewer.layers["AF1 · r=6"]
    assert layer.blending == "additive" and tuple(layer.contrast_limits) == (0.0, 1.0)
    source = viewer.layers["case [T1-like]"]
    np.testing.assert_allclose(layer.scale, source.scale)
    np.testing.assert_allclose(layer.translate, source.translate)
    explorer.map_boxes["zoom"].setChecked(True)
    settle(qtbot, explorer)
    assert viewer.layers["all · zoom (mm)"].visible

    explorer.set_checked(explorer.layer_list, ["AF1", "AF2"])
    settle(qtbot, explorer)
    assert sum(x.name.startswith("AF2 · r=") for x in viewer.layers) == 4

    def shown(part):
        return sorted(x.name for x in viewer.layers if part in x.name and x.visible)

    explorer.set_checked(explorer.rate_list, ["2", "14"])
    # two autofocus layers ticked: one on the canvas at a time (stacked, their colours would mix)
    assert shown(" · r=") == ["AF1 · r=14", "AF1 · r=2"] and explorer.step_slider.isVisibleTo(explorer)
    explorer.step_slider.setValue(1)
    assert shown(" · r=") == ["AF2 · r=14", "AF2 · r=2"] and explorer.step_label.text() == "AF2 (2 of 2)"
    explorer.step_slider.setValue(0)
    explorer.map_boxes["entropy"].setChecked(True)
    explorer.map_boxes["expected rate"].setChecked(True)
    settle(qtbot, explorer)
    entropy = viewer.layers["AF2 · entropy"].data
    assert np.nanmin(entropy) >= 0 and np.nanmax(entropy) <= 1
    count = len(viewer.layers)
    explorer.set_checked(explorer.layer_list, ["AF2"])  # unticked layers are hidden at once, not deleted
    assert not shown("AF1 ·") and shown("AF2 ·") and len(viewer.layers) == count
    explorer.set_checked(explorer.layer_list, ["AF1", "AF2"])
    assert "AF1 · blend" in shown("AF1 ·") and len(viewer.layers) == count  # back at once, nothing rebuilt
    # a newly ticked layer takes over a hidden one of the same kind instead of adding a napari layer
    for box in ("weights", "entropy", "expected rate"):
        explorer.map_boxes[box].setChecked(False)
    explorer.set_checked(explorer.layer_list, ["AF1"])
    settle(qtbot, explorer)
    before = viewer.layers["AF2 · blend"]
    explorer.set_checked(explorer.layer_list, ["AF2"])  # its own hidden layer comes back as it was
    assert viewer.layers["AF2 · blend"] is before and before.visible and not explorer.maps.building
    explorer.set_checked(explorer.layer_list, [])
    count = len(viewer.layers)
    explorer.set_checked(explorer.layer_list, ["AF2"])
    settle(qtbot, explorer)
    assert viewer.layers["AF2 · blend"] is before and len(viewer.layers) == count
    assert len(calls) == 1  # every switch above used the cached attention


def test_a_newly_ticked_layer_reuses_a_hidden_one(make_napari_viewer, qtbot, model_file, monkeypatch):
    viewer, explorer, _ = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    first = viewer.layers["AF1 · blend"]
    count = len(viewer.layers)
    explorer.set_checked(explorer.layer_list, ["AF2"])
    assert not first.visible  # hidden until it holds AF2's maps
    settle(qtbot, explorer)
    assert viewer.layers["AF2 · blend"] is first and first.visible and len(viewer.layers) == count
    assert "AF1 · blend" not in viewer.layers
    expected = explorer.result.attention["AF2"].astype(np.float32)
    hues = np.array([rate_hue(k) for k in range(4)], np.float32)
    np.testing.assert_allclose(first.data[16, 18, 20, :3] / 255, expected[:, 16, 18, 20] @ hues, atol=1 / 255)
    # quick clicks: AF2 twice before anything was built; the reused layer still gets AF2's maps
    # and is shown
    explorer.set_checked(explorer.layer_list, ["AF1"])
    settle(qtbot, explorer)
    explorer.set_checked(explorer.layer_list, ["AF2"])
    explorer.set_checked(explorer.layer_list, ["AF2"])
    settle(qtbot, explorer)
    layer = viewer.layers["AF2 · blend"]
    assert layer.visible and layer.metadata["autofocus"]["af"] == "AF2"
    np.testing.assert_allclose(layer.data[16, 18, 20, :3] / 255, expected[:, 16, 18, 20] @ hues, atol=1 / 255)


def test_voxel_readout_and_structure_chart(make_napari_viewer, qtbot, model_file, monkeypatch):
    viewer, explorer, calls = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    result = explorer.result
    source = viewer.layers["case [T1-like]"]
    viewer.dims.ndisplay = 2
    world = source.data_to_world((16, 18, 20))
    draws = []
    monkeypatch.setattr(explorer, "show_voxel", lambda index, real=explorer.show_voxel: draws.append(index))
    for step in range(20):  # the cursor crosses 20 voxels: the chart is redrawn once it pauses
        viewer.cursor.position = tuple(source.data_to_world((16, 18, step)))
    viewer.cursor.position = tuple(world)
    qtbot.waitUntil(lambda: explorer._last_index == (16, 18, 20), timeout=2000)
    assert draws == [(16, 18, 20)]
    monkeypatch.undo()
    shown = explorer.show_voxel((16, 18, 20))
    for name in ("AF1", "AF2"):
        np.testing.assert_allclose(shown["weights"][name], result.attention[name][:, 16, 18, 20], atol=1e-3)
        assert abs(shown["weights"][name].sum() - 1) < 1e-2
    assert "zoom" in explorer.readout.text() and "mm" in explorer.readout.text()
    axes = explorer.voxel_chart.figure.axes
    assert len(axes[0].patches) == 8  # 2 layers x 4 rates
    bars = list(axes[0].patches)
    explorer.show_voxel((16, 18, 21))  # the next voxel: the same bars, new heights
    assert list(explorer.voxel_chart.figure.axes[0].patches) == bars
    heights = [bar.get_height() for bar in bars]
    expected = [float(result.attention[n][k, 16, 18, 21]) for k in range(4) for n in ("AF1", "AF2")]
    np.testing.assert_allclose(heights, expected, atol=1e-3)

    explorer.classes_combo.setCurrentText("case ground truth")
    settle(qtbot, explorer)
    panels = explorer.structure_chart.panels  # one panel per structure, one stacked bar for AF1
    assert [p.title for p in panels] == ["background", "small lesion", "large lesion"]
    truth = np.asarray(viewer.layers["case ground truth"].data)
    a = result.attention["AF1"].astype(np.float64)
    for value, panel in enumerate(panels):
        ((label, segments),) = panel.bars
        inside = (truth == value) & ~np.isnan(a[0])
        assert label == "AF1" and abs(sum(segments) - 1) < 1e-3
        np.testing.assert_allclose(segments, a[:, inside].mean(axis=1), atol=1e-6)
    assert not explorer.structure_chart.grab().toImage().isNull()
    assert explorer.show_voxel((99, 0, 0)) is None
    assert "Outside" in explorer.readout.text()
    assert len(calls) == 1


def test_rerunning_segment_with_the_explorer_open_raises_nothing(
    make_napari_viewer, qtbot, model_file, monkeypatch
):
    """The explorer's own layer removals re-triggered its refresh, which removed the same layers twice."""
    viewer, explorer, calls = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    explorer.map_boxes["weights"].setChecked(True)
    explorer.set_checked(explorer.layer_list, ["AF1", "AF2"])
    settle(qtbot, explorer)
    explorer.map_boxes["entropy"].setChecked(True)
    settle(qtbot, explorer)
    explorer.map_boxes["entropy"].setChecked(False)  # hidden, kept: it must not keep stale maps
    assert not viewer.layers["AF1 · entropy"].visible
    viewer.layers["AF2 · r=6"].opacity = 0.3  # the user's own styling survives a re-run
    before = {layer.name: layer for layer in viewer.layers if " · " in layer.name}
    first = explorer.result
    errors = []
    monkeypatch.setattr("sys.excepthook", lambda *exc: errors.append(exc))
    segment = next(w for w in viewer.window.dock_widgets.values() if hasattr(w, "run_button"))
    run_and_wait(qtbot, segment)
    qtbot.waitUntil(lambda: explorer._shown_result == explorer.result.id != first.id, timeout=5000)
    settle(qtbot, explorer)
    assert not errors and not segment.runner.last_error
    assert explorer.result_combo.currentText() == "tiny_afn2 labels"
    assert explorer.checked(explorer.layer_list) == ["AF1", "AF2"]  # the user's choice stays
    names = [layer.name for layer in viewer.layers]
    assert sum(n.startswith("AF1 · r=") for n in names) == 4  # the new result's layers, once each
    assert len(names) == len(set(names))
    # updated in place: the same napari layers now hold the new result's maps
    after = {layer.name: layer for layer in viewer.layers if " · " in layer.name}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in after)
    assert viewer.layers["AF2 · r=6"].opacity == 0.3
    new = explorer.result
    assert new is not first
    np.testing.assert_array_equal(viewer.layers["AF2 · r=6"].data, new.attention["AF2"][1])
    assert viewer.layers["AF1 · blend"].metadata["autofocus"]["result"] == new.id
    from napari_autofocus.analysis.explorer_maps import derived_map

    hidden = viewer.layers["AF1 · entropy"]
    assert not hidden.visible
    expected = derived_map(new.attention["AF1"], new.rates["AF1"], "entropy").astype(np.float32)
    np.testing.assert_array_equal(hidden.data, expected)


def test_the_canvas_legend_is_prepared_with_every_character_it_can_show():
    from napari_autofocus.analysis.explorer_maps import legend_text
    from napari_autofocus.widgets.explorer import GLYPHS

    assert set(legend_text([2, 6, 10, 14, 18, 22, 26, 30])) <= set(GLYPHS)


def test_a_layer_unticked_before_its_maps_arrive_keeps_what_its_name_says(
    make_napari_viewer, qtbot, model_file, monkeypatch
):
    viewer, explorer, _ = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    explorer.set_checked(explorer.layer_list, ["AF2"])  # the AF1 layer is taken over for AF2 ...
    explorer.set_checked(explorer.layer_list, [])  # ... and unticked before AF2's maps arrived
    settle(qtbot, explorer)
    explorer.set_checked(explorer.layer_list, ["AF2"])  # back at once: it must hold AF2's maps
    settle(qtbot, explorer)
    layer = viewer.layers["AF2 · blend"]
    hues = np.array([rate_hue(k) for k in range(4)], np.float32)
    expected = explorer.result.attention["AF2"][:, 16, 18, 20].astype(np.float32) @ hues
    assert layer.visible
    np.testing.assert_allclose(layer.data[16, 18, 20, :3] / 255, expected, atol=1 / 255)


def test_a_map_that_fails_is_reported_and_the_others_are_still_built(
    make_napari_viewer, qtbot, model_file, monkeypatch, notes
):
    import napari_autofocus.widgets._explorer_layers as maker

    viewer, explorer, _ = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    original = maker.layer_content

    def failing(result, kind, af, k):
        if kind == "entropy":
            raise ValueError("no entropy today")
        return original(result, kind, af, k)

    monkeypatch.setattr(maker, "layer_content", failing)
    explorer.map_boxes["entropy"].setChecked(True)
    explorer.map_boxes["expected rate"].setChecked(True)
    settle(qtbot, explorer)
    assert "AF1 · expected rate" in viewer.layers and "AF1 · entropy" not in viewer.layers
    assert any("could not compute 'AF1 · entropy': no entropy today" in m for m in notes["error"])


def test_renaming_the_result_layer_keeps_the_explorer_on_it(
    make_napari_viewer, qtbot, model_file, monkeypatch
):
    viewer, explorer, _ = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    viewer.layers["tiny_afn2 labels"].name = "my labels"
    qtbot.waitUntil(lambda: explorer.result_combo.currentText() == "my labels", timeout=5000)
    settle(qtbot, explorer)
    assert explorer.result is not None and viewer.layers["AF1 · blend"].visible


def test_hidden_weight_layers_are_refilled_only_with_the_rate_they_are_named_after():
    from types import SimpleNamespace

    from napari_autofocus.widgets._explorer_layers import fillable

    result = SimpleNamespace(attention={"AF1": None}, rates={"AF1": (2, 6, 10, 14)})
    assert fillable(result, {"af": "AF1", "k": 1, "rate": 6})
    assert not fillable(result, {"af": "AF1", "k": 1, "rate": 3})  # another model's rates
    assert not fillable(result, {"af": "AF2", "k": None})
    assert fillable(result, {"af": None, "k": None})  # the zoom map
    assert not fillable(SimpleNamespace(attention={}, rates={}), {"af": None, "k": None})  # no AF layer
    assert not fillable(None, {"af": "AF1", "k": None})


def test_a_users_layer_with_an_explorer_name_is_never_overwritten(
    make_napari_viewer, qtbot, model_file, monkeypatch
):
    viewer, explorer, _ = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    mine = viewer.add_image(np.zeros((4, 4, 4), np.float32), name="AF2 · blend")  # e.g. a saved map reopened
    explorer.set_checked(explorer.layer_list, ["AF2"])
    settle(qtbot, explorer)
    assert mine.data.shape == (4, 4, 4) and not mine.data.any() and "autofocus" not in mine.metadata


def test_a_full_garbage_collection_never_falls_inside_the_turn_that_adds_a_layer(
    make_napari_viewer, qtbot, model_file, monkeypatch
):
    import gc

    from qtpy.QtCore import QTimer
    from test_garbage_collection import push_towards_a_full_collection

    from napari_autofocus.widgets import _garbage_collection
    from napari_autofocus.widgets._explorer_layers import ExplorerLayers

    viewer, explorer, _ = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    events, young_at_add = [], []
    add_layer, collect = ExplorerLayers._add_layer, _garbage_collection.collect_now

    def recorded_add(self, *args, **kwargs):
        young_at_add.append(gc.get_count()[2])
        events.append("add")
        add_layer(self, *args, **kwargs)
        events.append("added")

    def recorded_collect():
        events.append("our collection")
        collect()
        QTimer.singleShot(0, lambda: events.append("event loop ran"))

    def callback(phase, info):
        if phase == "start" and info["generation"] == 2:
            events.append("full collection")

    monkeypatch.setattr(ExplorerLayers, "_add_layer", recorded_add)
    monkeypatch.setattr(_garbage_collection, "collect_now", recorded_collect)
    gc.callbacks.append(callback)
    try:
        push_towards_a_full_collection()  # Python may start one at once; the explorer otherwise
        explorer.set_checked(explorer.layer_list, ["AF1", "AF2"])  # one new layer: AF2's blend
        settle(qtbot, explorer)
    finally:
        gc.callbacks.remove(callback)
    assert not viewer.layers["AF2 · blend"].visible  # built, and off the canvas until stepped to
    add = events.index("add")
    assert events[add + 1] == "added" and "full collection" in events[:add]  # before, never during
    assert young_at_add[0] + 2 <= gc.get_threshold()[2]  # and no reason for Python to start one
    if "our collection" in events:  # then the layer came on a later turn of the event loop
        assert "event loop ran" in events[events.index("our collection") : add]


def test_deleting_the_result_layer_frees_the_result_with_the_explorer_open(
    make_napari_viewer, qtbot, model_file, monkeypatch
):
    import gc
    import weakref

    viewer, explorer, _ = _segmented(make_napari_viewer, qtbot, model_file, monkeypatch)
    explorer.map_boxes["entropy"].setChecked(True)  # layers built, charts drawn, a voxel read out
    settle(qtbot, explorer)
    explorer.show_voxel((16, 18, 20))
    explorer.build_now()
    kept = weakref.ref(explorer.result)
    viewer.layers.remove("tiny_afn2 labels")
    qtbot.waitUntil(lambda: explorer.result_combo.count() == 0, timeout=5000)
    settle(qtbot, explorer)
    gc.collect()
    assert kept() is None  # the model, inputs and attention are gone with their layer
    assert not explorer.maps.layers()  # and so are the explorer's layers
