"""``python -m napari_autofocus demo [--screenshot FILE]``: napari with the sample and the plugin docked."""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from napari_autofocus.errors import AutofocusError

PLUGIN = "napari-autofocus"
# Widgets docked by the demo, in order (display names from napari.yaml).
DEMO_WIDGETS = ("Segment", "Attention explorer")
DEMO_WAIT_SECONDS = 300


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m napari_autofocus", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="open napari with the sample scan and the plugin's widgets")
    demo.add_argument(
        "--screenshot",
        metavar="FILE",
        help="render the window (headless if there is no display), save it as a PNG and exit",
    )
    return parser


def open_demo(viewer):
    """Load the sample, dock the plugin's widgets and, when a bundled model exists, segment with it.

    The sample is the brain (MNI152 anatomy, simulated tumours) when a bundled model fits it,
    otherwise the phantom; Segment offers the bundled AFN-6 that fits.

    The first picture is meant to read at once: the slice with the most lesion, one dimmed grey
    channel, no ground truth drawn over the prediction, and once the run ends the explorer in front
    with its cursor chart filled for a voxel inside a lesion (:func:`show_first_result`).
    Returns the Segment widget; its run (if any) goes on in a background worker.
    """
    viewer.open_sample(PLUGIN, "brain")
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, DEMO_WIDGETS[0])]
    if docks[0][1].problems():  # no bundled model fits the brain: the phantom and its models
        viewer.layers.clear()
        viewer.open_sample(PLUGIN, "phantom")
    docks += [viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True) for name in DEMO_WIDGETS[1:]]
    images = [layer for layer in viewer.layers if type(layer).__name__ == "Image"]
    if images:
        viewer.layers.selection.active = images[0]
        images[0].opacity = 0.5  # one dimmed grey channel: the attention colours on top stand out
        for other in images[1:]:
            other.visible = False
    truth = next((layer for layer in viewer.layers if layer.metadata.get("role") == "ground truth"), None)
    voxel = None
    if truth is not None:
        truth.visible = False  # one label layer on screen: the prediction
        voxel = lesion_voxel(np.asarray(truth.data))
        if voxel is not None:
            viewer.dims.set_point(0, truth.data_to_world(voxel)[0])
    viewer.reset_view()
    segment, explorer = docks[0][1], docks[-1][1]
    docks[0][0].raise_()
    segment.run_finished.connect(lambda: show_first_result(viewer, docks[-1][0], explorer, voxel, truth))
    entry = getattr(getattr(segment, "picker", None), "entry", None)
    if entry is not None and entry.source == "bundled" and not segment.problems():
        segment.run()
    return segment


def lesion_voxel(truth: np.ndarray) -> tuple[int, int, int] | None:
    """A voxel in the middle of the largest lesion class on the axial slice with the most lesion."""
    if not (truth > 0).any():
        return None
    z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
    points = np.argwhere(truth[z] == truth[z].max())
    y, x = points[len(points) // 2]
    return z, int(y), int(x)


def show_first_result(viewer, explorer_dock, explorer, voxel, truth) -> None:
    """After the demo's run: the explorer in front, the prediction drawn as outlines over the
    attention colours, the structure chart on the ground truth, the cursor chart on a lesion voxel."""
    from napari_autofocus.app.results import RESULTS

    labels = next((layer for layer in reversed(viewer.layers) if RESULTS.of(layer) is not None), None)
    if labels is None:
        return
    explorer.refresh()  # the explorer would look at the new layers once events settle; look now
    explorer.build_now()  # and its first layer is in the picture
    explorer_dock.raise_()
    labels.contour = 1
    viewer.layers.move(viewer.layers.index(labels), len(viewer.layers))
    viewer.layers.selection.active = labels
    if truth is not None and truth in viewer.layers:
        explorer.classes_combo.setCurrentText(truth.name)
    if voxel is not None:
        viewer.cursor.position = tuple(labels.data_to_world(voxel))
        explorer.show_voxel(voxel)


def wait_for_run(segment, seconds: float = DEMO_WAIT_SECONDS) -> None:
    """Process Qt events until the Segment widget's background run (if any) has ended."""
    import time

    from qtpy.QtWidgets import QApplication

    deadline = time.monotonic() + seconds
    runner = getattr(segment, "runner", None)
    while runner is not None and runner.running and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(5):
        QApplication.processEvents()


def run_demo(screenshot: str | None) -> int:
    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if screenshot is None and headless and sys.platform.startswith("linux"):
        raise AutofocusError(
            "no display to open napari on; use --screenshot FILE to render the demo headless"
        )
    if screenshot is None:
        import napari

        viewer = napari.Viewer(title="napari-autofocus demo")
        open_demo(viewer)
        napari.run()
        return 0

    from napari_autofocus._display import display_available

    with display_available():
        import napari

        viewer = napari.Viewer(title="napari-autofocus demo", show=True)
        viewer.window._qt_window.resize(1500, 950)
        segment = open_demo(viewer)
        wait_for_run(segment)
        save_window(viewer, screenshot)
        viewer.close()
    print(f"saved {screenshot}")
    return 0


def save_window(viewer, path: str) -> None:
    """The whole window (docks included) as a PNG, once pending paints are done."""
    from qtpy.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
    viewer.window.screenshot(path=str(path), flash=False, canvas_only=False)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "demo":
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return run_demo(args.screenshot)
    except AutofocusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
