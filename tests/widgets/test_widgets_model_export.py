"""Export model: the plugin writes a bioimage.io package in the background, and it loads back."""

from pathlib import Path

import pytest
import yaml
from repo_paths import REPO
from widget_helpers import PLUGIN, click

pytest.importorskip("bioimageio.spec")
BASIC = REPO / "sample_data" / "models" / "BASIC_brain.safetensors"


def test_file_menu_has_export_model():
    manifest = yaml.safe_load((REPO / "napari.yaml").read_text())
    entries = manifest["contributions"]["menus"]["napari/file/io_utilities"]
    assert {"command": "napari-autofocus.export_model"} in entries


def test_export_model_writes_a_package_that_loads_back(make_napari_viewer, qtbot, tmp_path, notes):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export model")
    widget.picker.set_model_file(str(BASIC))
    with qtbot.waitSignal(widget.export_finished, timeout=5000):
        click(qtbot, widget.export_button)
    assert any("output folder" in m for m in notes["error"])

    widget.folder.setText(str(tmp_path))
    assert widget.format == "bioimageio"
    with qtbot.waitSignal(widget.export_finished, timeout=120000):
        click(qtbot, widget.export_button)
        assert not widget.export_button.isEnabled()  # the export runs in the background
    assert widget.written == tmp_path / "BASIC_brain.bioimageio.zip" and widget.written.is_file()
    assert any("Exported the model" in m for m in notes["info"])

    with qtbot.waitSignal(widget.export_finished, timeout=120000):
        click(qtbot, widget.export_button)  # again, without "replace": refused, the file kept
    assert "--force" in widget.status.text() or "replace" in widget.status.text()

    widget.picker.set_model_file(str(widget.written))  # our package is a model file like any other
    assert Path(widget.picker.path) == widget.written
    assert "BASIC_brain" in widget.picker.combo.currentText()
