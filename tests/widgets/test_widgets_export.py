"""Export: NIfTI files with the source affine, a parameters JSON, and no silent overwrite."""

import json

import nibabel as nib
import numpy as np
from widget_helpers import PLUGIN, click, open_segment, run_and_wait

from napari_autofocus.io.nifti import load_nifti


def test_export_writes_nifti_with_the_source_affine(make_napari_viewer, qtbot, model_file, tmp_path, notes):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "phantom")  # real NIfTI geometry in metadata["nifti"]
    source = viewer.layers["phantom_09000 [T1-like]"]
    crop = tuple(slice(30, 62) for _ in range(3))
    for name in ("phantom_09000 [T1-like]", "phantom_09000 [T2-like]"):
        layer = viewer.layers[name]
        layer.data = np.asarray(layer.data)[crop]  # keep the test small; geometry written from the layer
        layer.metadata.pop("nifti")
    segment = open_segment(viewer, model_file)
    run_and_wait(qtbot, segment)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    with qtbot.waitSignal(widget.export_finished, timeout=5000):
        click(qtbot, widget.export_button)
    assert any("output folder" in m for m in notes["error"])

    out = tmp_path / "out"
    widget.folder.setText(str(out))
    widget.kind_boxes["probabilities"].setChecked(True)
    with qtbot.waitSignal(widget.export_finished, timeout=60000):
        click(qtbot, widget.export_button)  # in the background: the viewer stays responsive
        assert not widget.export_button.isEnabled()
    written = widget.written
    names = sorted(p.name for p in written)
    assert "tiny_afn2.nii.gz" in names and "tiny_afn2_prediction.json" in names
    assert "tiny_afn2_AF2_attention.nii.gz" in names and "tiny_afn2_zoom_mm.nii.gz" in names
    labels = load_nifti(out / "tiny_afn2.nii.gz")
    np.testing.assert_array_equal(labels.data, viewer.layers["tiny_afn2 labels"].data)
    np.testing.assert_allclose(labels.geometry.spacing, source.scale)
    np.testing.assert_allclose(labels.geometry.origin, source.translate)
    attention = nib.load(out / "tiny_afn2_AF1_attention.nii.gz")
    assert attention.shape == (32, 32, 32, 4)
    np.testing.assert_allclose(attention.affine, nib.load(out / "tiny_afn2.nii.gz").affine)
    params = json.loads((out / "tiny_afn2_prediction.json").read_text())
    assert params["model_name"] == "tiny_afn2" and "torch" in params["versions"]
    assert params["inputs"] == ["phantom_09000 [T1-like]", "phantom_09000 [T2-like]"]

    before = (out / "tiny_afn2.nii.gz").stat().st_mtime_ns
    widget.confirm_overwrite = lambda paths: False
    assert widget.export() == []
    assert (out / "tiny_afn2.nii.gz").stat().st_mtime_ns == before
    assert any("no file was changed" in m for m in notes["info"])
    widget.confirm_overwrite = lambda paths: True
    assert len(widget.export()) == len(written)


def test_export_keeps_a_nifti_sources_affine(make_napari_viewer, qtbot, model_file, tmp_path):
    viewer = make_napari_viewer()
    source_affine = np.array([[-0.8, 0, 0, 40.0], [0, 1.2, 0, -30.0], [0, 0, 1.5, 12.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    for name in ("T1-like", "T2-like"):
        path = tmp_path / f"scan_{name}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((30, 28, 26)).astype(np.float32), source_affine), str(path))
        viewer.open(str(path), plugin=PLUGIN)
    segment = open_segment(viewer, model_file)
    run_and_wait(qtbot, segment)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
    widget.folder.setText(str(tmp_path / "out"))
    widget.export()
    written = nib.load(tmp_path / "out" / "tiny_afn2.nii.gz")
    np.testing.assert_allclose(written.affine, source_affine, atol=1e-5)
    assert written.shape == (30, 28, 26)
