"""What the explorer's pictures say: a 3D view that shows the inside, a legend per map kind, layers in
AF1...AF6 order under the prediction's outlines, and the result's warnings on the canvas."""

import numpy as np
import pytest
from widget_helpers import PLUGIN, open_segment, run_and_wait

SHAPE = (32, 40, 40)


def add_ball(viewer):
    """A ball in air (zero outside), a smaller ball inside it as the 'lesion', isotropic voxels."""
    rng = np.random.default_rng(1)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    r = np.sqrt(z**2 + y**2 + x**2)
    inside = r < 0.8
    noise = 0.1 * rng.standard_normal(SHAPE).astype(np.float32)
    t1 = np.where(inside, 1.0 + noise, 0.0).astype(np.float32)
    t2 = np.where(inside, (r < 0.35) + noise, 0.0).astype(np.float32)
    viewer.add_image(t1, name="ball [T1-like]", metadata={"channel_name": "T1-like"})
    viewer.add_image(t2, name="ball [T2-like]", metadata={"channel_name": "T2-like"})
    return r


def segmented(make_napari_viewer, qtbot, model_file, show=False):
    viewer = make_napari_viewer(show=show)
    r = add_ball(viewer)
    segment = open_segment(viewer, model_file)
    run_and_wait(qtbot, segment)
    return viewer, r


def open_explorer(viewer, qtbot):
    _, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
    settle(qtbot, explorer)
    return explorer


def settle(qtbot, explorer) -> None:
    qtbot.waitUntil(lambda: not explorer.building, timeout=30000)
    qtbot.wait(50)


def result_of(viewer):
    from napari_autofocus.app.results import RESULTS

    return next(RESULTS.of(layer) for layer in viewer.layers if RESULTS.of(layer) is not None)


def test_3d_shows_where_each_rate_wins_inside_and_2d_comes_back(make_napari_viewer, qtbot, model_file):
    viewer, r = segmented(make_napari_viewer, qtbot, model_file, show=True)
    result = result_of(viewer)
    attention = result.attention["AF1"]  # AF1 made to zoom out (r=14) in the lesion, in (r=2) elsewhere
    computed = ~np.isnan(attention[0])
    attention[:] = 0.0
    attention[0][r >= 0.35] = 1.0
    attention[3][r < 0.35] = 1.0
    attention[:, ~computed] = np.nan
    explorer = open_explorer(viewer, qtbot)
    blend = viewer.layers["AF1 · blend"]
    assert blend.visible and (blend.data[r >= 0.8][:, 3] == 0).all()  # air: fully transparent
    labels = explorer.source_layer
    before = (labels.blending, labels.opacity)

    viewer.dims.ndisplay = 3
    settle(qtbot, explorer)
    regions = [layer for layer in viewer.layers if layer.name.endswith("region (3D)")]
    expected = [f"AF1 · r={rate} region (3D)" for rate in (14, 10, 6, 2)]  # bottom first
    assert [x.name for x in regions if x.visible] == expected
    assert not blend.visible and all(x.rendering == "iso" for x in regions)
    assert (labels.blending, labels.opacity) == ("additive", 0.3)  # seen through, not a wall
    for layer in viewer.layers:  # the attention alone: its colours are what is tested
        if layer not in regions:
            layer.visible = False
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(float)
    background = shot[0, 0]
    assert np.abs(shot[:5, :5] - background).max() < 2 and background.max() < 10  # the canvas colour
    lit = np.abs(shot - background).sum(axis=-1) > 30
    assert 0.05 < lit.mean() < 0.9  # the ball, not a block filling the canvas
    ys, xs = np.nonzero(lit)
    cy, cx, radius = ys.mean(), xs.mean(), (ys.max() - ys.min()) / 2
    yy, xx = np.indices(lit.shape)
    distance = np.hypot(yy - cy, xx - cx) / radius
    centre = shot[(distance < 0.2) & lit].mean(axis=0)
    shell = shot[(distance > 0.6) & (distance < 0.85) & lit].mean(axis=0)
    redness = lambda rgb: rgb[0] - rgb[2]  # noqa: E731
    assert redness(centre) > redness(shell) + 20  # the lesion's r=14 shows through the r=2 shell

    for layer in viewer.layers:
        layer.visible = layer.name in ("AF1 · blend", labels.name) or "[T1" in layer.name
    viewer.dims.ndisplay = 2
    settle(qtbot, explorer)
    assert blend.visible and blend.rgb and not any(x.visible for x in regions)
    assert (labels.blending, labels.opacity) == before


def test_every_kind_of_map_has_its_own_legend_with_units(make_napari_viewer, qtbot, model_file):
    viewer, _ = segmented(make_napari_viewer, qtbot, model_file)
    explorer = open_explorer(viewer, qtbot)
    text = explorer._text_overlay
    assert "AF1 colours: blue r=2" in text().text and "(voxels)" in text().text
    viewer.layers["AF1 · blend"].visible = False  # the user's eye button: the legend follows
    assert not text().visible
    viewer.layers["AF1 · blend"].visible = True
    assert "AF1 colours" in text().text
    explorer.map_boxes["blend"].setChecked(False)
    for kind, unit in (("entropy", "0: one rate decides"), ("expected rate", "voxels"), ("zoom", "mm")):
        for name, box in explorer.map_boxes.items():
            box.setChecked(name == kind)
        settle(qtbot, explorer)
        shown = [x for x in explorer.maps.layers().values() if x.visible]
        assert len(shown) == 1 and shown[0].colorbar.visible, kind
        assert unit in text().text and "colours:" not in text().text, (kind, text().text)
    low, high = viewer.layers["all · zoom (mm)"].contrast_limits
    assert f"zoom {low:.3g}-{high:.3g}: mm" in text().text
    explorer.map_boxes["zoom"].setChecked(False)
    explorer.map_boxes["arg-max rate"].setChecked(True)
    settle(qtbot, explorer)
    assert "AF1 colours: blue r=2" in text().text  # the rate hues again
    for box in explorer.map_boxes.values():
        box.setChecked(False)
    settle(qtbot, explorer)
    assert not text().visible


def test_layers_run_af1_first_under_the_outlined_prediction(make_napari_viewer, qtbot, model_file):
    viewer, _ = segmented(make_napari_viewer, qtbot, model_file)
    explorer = open_explorer(viewer, qtbot)
    explorer.map_boxes["entropy"].setChecked(True)
    explorer.set_checked(explorer.layer_list, ["AF2", "AF1"])
    settle(qtbot, explorer)
    top_first = [layer.name for layer in reversed(viewer.layers)]
    labels = explorer.source_layer.name
    block = top_first[top_first.index(labels) + 1 :][:4]
    assert block == ["AF1 · blend", "AF1 · entropy", "AF2 · blend", "AF2 · entropy"]
    assert explorer.source_layer.contour >= 1  # outlines: uniform attention under them looks uniform
    assert [x.name for x in viewer.layers if x.visible and x.name.startswith("AF")] == [
        "AF1 · entropy",
        "AF1 · blend",
    ]  # one autofocus layer on the canvas at a time
    explorer.step_slider.setValue(1)
    settle(qtbot, explorer)
    assert sorted(x.name for x in viewer.layers if x.visible and x.name.startswith("AF")) == [
        "AF2 · blend",
        "AF2 · entropy",
    ]
    assert "AF2 colours" in explorer._text_overlay().text


@pytest.mark.parametrize("case", ["warning", "empty"])
def test_the_results_warnings_travel_into_the_explorer_and_onto_the_canvas(
    make_napari_viewer, qtbot, model_file, case
):
    viewer, _ = segmented(make_napari_viewer, qtbot, model_file)
    result = result_of(viewer)
    if case == "warning":
        result.preprocessing["warnings"] = ["this model was trained on synthetic phantoms"]
        said = "trained on synthetic phantoms"
    else:
        result.labels[:] = 0
        said = "empty result"
    explorer = open_explorer(viewer, qtbot)
    assert said in explorer.warning.text() and explorer.warning.isVisibleTo(explorer)
    assert explorer._text_overlay().text.startswith("\u26a0") and said in explorer._text_overlay().text


def test_the_plugins_docks_open_as_tabs_not_stacked(make_napari_viewer, qtbot, model_file):
    viewer = make_napari_viewer(show=True)
    segment_dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    explorer_dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
    window = viewer.window._qt_window
    qtbot.waitUntil(lambda: segment_dock in window.tabifiedDockWidgets(explorer_dock), timeout=5000)
    assert not explorer_dock.visibleRegion().isEmpty()  # the newest in front, with the whole height
    assert explorer_dock.height() > 0.8 * window.centralWidget().height()


def test_a_rate_in_the_docks_legend_never_wraps_inside():
    from napari_autofocus.analysis.explorer_maps import legend_html

    html = legend_html([2, 6, 10, 14], 2.0)
    assert "&nbsp;r=10&nbsp;(20&nbsp;mm)" in html and " &nbsp; " in html  # breaks only between rates


def test_the_explorer_follows_the_result_stores_events(make_napari_viewer, qtbot):
    from napari_autofocus.app.results import RESULTS

    viewer = make_napari_viewer()
    _, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
    qtbot.wait(20)
    assert not explorer._refresh_timer.isActive()
    RESULTS.added.emit("0" * 32)  # what Segment's hand-off does, before any layer event
    assert explorer._refresh_timer.isActive()
    qtbot.wait(20)
    RESULTS.removed.emit("0" * 32)
    assert explorer._refresh_timer.isActive()
