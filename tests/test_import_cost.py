"""Import boundaries: training never pulls Qt/napari; the plugin's light paths never pull torch."""

import subprocess
import sys

import pytest

HEAVY_CHECK = """
import sys
import {module}
bad = sorted(m for m in {forbidden!r} if m in sys.modules)
print(",".join(bad))
"""


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("src_training", ["napari", "qtpy", "PyQt6", "PyQt5", "PySide6"]),
        ("src_training.cli", ["napari", "qtpy", "PyQt6", "PyQt5", "PySide6"]),
        ("src_training.phantom_cases", ["napari", "qtpy", "PyQt6", "torch"]),
        ("napari_autofocus", ["torch", "napari", "qtpy"]),
        ("napari_autofocus._reader", ["torch"]),
        ("napari_autofocus._writer", ["torch"]),
        ("napari_autofocus._sample_data", ["torch"]),
        ("napari_autofocus.widgets.scan_info", ["torch"]),
        ("napari_autofocus.widgets.segment", ["torch"]),
        ("napari_autofocus.widgets.explorer", ["torch"]),
        ("napari_autofocus.widgets.compare", ["torch"]),
        ("napari_autofocus.widgets.counterfactual", ["torch"]),
        ("napari_autofocus.widgets.export", ["torch"]),
        ("napari_autofocus.analysis.attention_maths", ["torch", "napari", "qtpy"]),
        ("napari_autofocus.analysis.metrics", ["torch", "napari", "qtpy"]),
        ("napari_autofocus.nets.card", ["torch", "napari", "qtpy"]),
        ("napari_autofocus.inference.predictor", ["torch", "napari", "qtpy"]),
        ("napari_autofocus.nets", ["torch", "napari", "qtpy"]),  # names load on first use
        ("napari_autofocus.nets.registry", ["torch", "napari", "qtpy"]),
        ("napari_autofocus.app.model_library", ["torch", "napari", "qtpy"]),
        ("napari_autofocus.app.results", ["torch", "napari", "qtpy"]),
    ],
)
def test_module_does_not_import(module, forbidden):
    code = HEAVY_CHECK.format(module=module, forbidden=forbidden)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {module} imported {result.stdout.strip()}"
