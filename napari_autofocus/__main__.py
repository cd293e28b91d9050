"""``python -m napari_autofocus demo [--screenshot FILE]``: napari with the sample and the plugin docked."""

from __future__ import annotations

import argparse
import os
import sys

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

    Returns the Segment widget; its run (if any) goes on in a background worker.
    """
    viewer.open_sample(PLUGIN, "phantom")
    widgets = [viewer.window.add_plugin_dock_widget(PLUGIN, name)[1] for name in DEMO_WIDGETS]
    images = [layer for layer in viewer.layers if type(layer).__name__ == "Image"]
    if images:
        viewer.layers.selection.active = images[0]
        # one dimmed grey channel: the attention colours on top stand out from it
        images[0].opacity = 0.5
        for other in images[1:]:
            other.visible = False
    viewer.reset_view()
    segment = widgets[0]
    entry = getattr(getattr(segment, "picker", None), "entry", None)
    if entry is not None and entry.source == "bundled" and not segment.problems():
        segment.run()
    return segment


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
        from qtpy.QtWidgets import QApplication

        viewer = napari.Viewer(title="napari-autofocus demo", show=True)
        viewer.window._qt_window.resize(1500, 950)
        segment = open_demo(viewer)
        wait_for_run(segment)
        for _ in range(5):
            QApplication.processEvents()
        viewer.window.screenshot(path=screenshot, flash=False, canvas_only=False)
        viewer.close()
    print(f"saved {screenshot}")
    return 0


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
