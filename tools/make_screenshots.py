"""Render each dock widget on the phantom sample into docs/screenshots/*.png (headless-safe).

Segments with the first bundled model (sample_data/models/*.safetensors, AFN6) and compares all
of them, so the pictures show learnt attention rather than noise. Run: ``python tools/make_screenshots.py``
(a few minutes on a CPU).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_autofocus.__main__ import lesion_voxel  # noqa: E402
from napari_autofocus._display import display_available  # noqa: E402
from napari_autofocus.app.model_library import bundled_models  # noqa: E402

PLUGIN = "napari-autofocus"
CLASSES = {"0": "background", "1": "small lesion", "2": "large lesion"}


def pump(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait(widget, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while widget.runner.running and time.monotonic() < end:
        pump(0.05)
    pump(0.5)


def only_visible(viewer, names) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names


DOCKS: list = []


def show_only_dock(viewer, dock) -> None:
    """One dock at a time, so each screenshot shows its widget at a readable size."""
    if dock not in DOCKS:
        DOCKS.append(dock)
    for other in DOCKS:
        other.setVisible(other is dock)
    pump()


def shoot(viewer, path: Path) -> None:
    pump(0.5)
    viewer.window.screenshot(path=str(path), flash=False, canvas_only=False)
    print(f"saved {path}")


def shoot_map_kinds(viewer, explorer, layer: str, path: Path) -> None:
    """The canvas for each scalar and per-rate map of one autofocus layer, 2 x 2 in one picture,
    each with its own legend (units) and colour bar."""
    from PIL import Image

    scan = {"phantom_09000 [T1-like]"}
    explorer.set_checked(explorer.layer_list, [layer])
    panels = []
    rates = explorer.checked(explorer.rate_list)
    for kind in ("weights", "expected rate", "entropy", "zoom"):
        for name, box in explorer.map_boxes.items():
            box.setChecked(name == kind)
        # one rate's weights (r=10, where AF1 zooms out in the lesions): added up, four wash to white
        explorer.set_checked(explorer.rate_list, rates[2:3] if kind == "weights" else rates)
        explorer.build_now()
        only_visible(viewer, scan | {x.name for x in explorer.maps.layers().values() if x.visible})
        explorer._show_legend(explorer.result)
        pump(0.5)
        panels.append(Image.fromarray(viewer.screenshot(canvas_only=True, flash=False)))
    width, height = panels[0].size
    sheet = Image.new("RGB", (2 * width, 2 * height))
    for i, panel in enumerate(panels):
        sheet.paste(panel.convert("RGB"), ((i % 2) * width, (i // 2) * height))
    sheet.save(path)
    print(f"saved {path}")
    for name, box in explorer.map_boxes.items():
        box.setChecked(name == "blend")
    explorer.build_now()


def shoot_brain_in_3d(viewer, path: Path) -> None:
    """The brain sample segmented by its AFN-6, AF1's attention in 3D: one translucent surface
    per rate around where it wins, so the inside shows (the issue's 'blue block' before)."""
    viewer.layers.clear()
    viewer.open_sample(PLUGIN, "brain")
    model = next(str(e.path) for e in bundled_models() if Path(e.path).name == "AFN6_brain.safetensors")
    dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    segment.picker.set_model_file(model)
    segment.run()
    wait(segment)
    dock, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
    explorer.refresh()
    explorer.build_now()
    only_visible(viewer, {"AF1 · blend", "AFN6_brain labels"})
    viewer.dims.ndisplay = 3
    explorer.build_now()
    viewer.reset_view()
    viewer.camera.angles = (-10.0, 35.0, 95.0)  # tilted: the surfaces read as 3D
    show_only_dock(viewer, dock)
    shoot(viewer, path)
    viewer.dims.ndisplay = 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="autofocus-shots-"))
    import os

    os.environ.setdefault("NAPARI_AUTOFOCUS_CONFIG_DIR", str(work / "config"))  # keep the user's recent list
    models = [str(e.path) for e in bundled_models() if "_phantom" in Path(e.path).name]  # the phantom study
    if len(models) < 2:
        raise SystemExit("the screenshots need the bundled models in sample_data/models/ (at least two)")

    with display_available():
        import napari

        viewer = napari.Viewer(title="napari-autofocus", show=True)
        viewer.window._qt_window.resize(1600, 1000)
        shoot_brain_in_3d(viewer, out / "explorer_3d.png")  # first: no notification toast over it
        viewer.layers.clear()
        viewer.open_sample(PLUGIN, "phantom")
        truth = np.asarray(viewer.layers["phantom_09000 ground truth"].data)
        voxel = lesion_voxel(truth)
        viewer.dims.ndisplay = 2
        viewer.dims.set_point(0, viewer.layers["phantom_09000 ground truth"].data_to_world(voxel)[0])
        name = Path(models[0]).name.removesuffix(".safetensors")

        dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
        segment.picker.set_model_file(models[0])
        segment.probabilities.setChecked(True)
        segment.run()
        wait(segment)
        only_visible(viewer, {"phantom_09000 [T1-like]", f"{name} labels"})
        viewer.reset_view()
        show_only_dock(viewer, dock)
        shoot(viewer, out / "segment.png")

        dock, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
        layers = list(explorer.result.attention)
        first, last = layers[0], layers[-1]
        # AF1 zooms out inside lesions; AF3 (when there is one) switches rate between the two classes
        contrast = "AF3" if "AF3" in layers else last
        explorer.set_checked(explorer.layer_list, sorted({first, contrast}))
        explorer.map_boxes["arg-max rate"].setChecked(True)
        explorer.classes_combo.setCurrentText("phantom_09000 ground truth")
        explorer.build_now()
        # the explorer's default view: the blend under the prediction's outlines
        only_visible(viewer, {"phantom_09000 [T1-like]", f"{first} · blend", f"{name} labels"})
        viewer.cursor.position = tuple(viewer.layers[f"{name} labels"].data_to_world(voxel))
        explorer.show_voxel(voxel)
        show_only_dock(viewer, dock)
        shoot(viewer, out / "explorer.png")

        only_visible(viewer, {f"{contrast} · arg-max rate", "phantom_09000 [T1-like]", f"{name} labels"})
        viewer.layers[f"{contrast} · arg-max rate"].opacity = 0.7
        shoot(viewer, out / "explorer_argmax.png")
        shoot_map_kinds(viewer, explorer, first, out / "explorer_maps.png")

        dock, counter = viewer.window.add_plugin_dock_widget(PLUGIN, "Counterfactuals")
        counter.layer_combo.setCurrentText(first)
        counter.mode_combo.setCurrentIndex(1)  # only the smallest rate
        counter.run()
        wait(counter)
        only_visible(
            viewer, {"phantom_09000 [T1-like]", f"{name} changed voxels", f"{name} counterfactual labels"}
        )
        show_only_dock(viewer, dock)
        shoot(viewer, out / "counterfactuals.png")

        explorer.set_checked(explorer.layer_list, [])
        explorer.build_now()
        dock, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
        for path in models:
            compare.add_model_file(path)
        compare.run()
        wait(compare)
        show_only_dock(viewer, dock)  # the grid: one titled cell per model, the scan under its labels
        shoot(viewer, out / "compare.png")
        compare.leave_grid()

        dock, export = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
        export.result_combo.setCurrentText(f"{name} (compare)")
        export.folder.setText(str(work / "export"))
        export.export()
        only_visible(viewer, {"phantom_09000 [T1-like]", f"{name} (compare)"})
        show_only_dock(viewer, dock)
        shoot(viewer, out / "export.png")
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
