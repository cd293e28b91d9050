"""NIfTI geometry: reorientation to napari's axes and an exact round trip back to the source."""

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_autofocus._reader import load_layers, napari_get_reader, read_nifti
from napari_autofocus._writer import write_image, write_labels
from napari_autofocus.errors import NiftiError
from napari_autofocus.io.nifti import load_nifti

# An LPI-stored, anisotropic, shifted volume: nothing about it is canonical.
LPI_AFFINE = np.array(
    [[-0.8, 0, 0, 40.0], [0, -1.2, 0, 60.0], [0, 0, -2.5, 30.0], [0, 0, 0, 1]],
)


def _write(path, data, affine=LPI_AFFINE):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def test_reorientation_puts_superior_first_and_anterior_at_the_top(tmp_path):
    data = np.zeros((5, 6, 7), np.float32)  # stored L-P-I: x grows left, y posterior, z inferior
    data[0, 0, 0] = 1.0  # the right-most, anterior-most, superior-most voxel
    volume = load_nifti(_write(tmp_path / "a.nii.gz", data))
    assert volume.data.shape == (7, 6, 5)
    # superior-most slice is the last one (S grows with index); anterior is row 0; right is column 0.
    assert volume.data[-1, 0, 0] == 1.0
    assert volume.geometry.spacing == pytest.approx((2.5, 1.2, 0.8))
    assert volume.geometry.source_axcodes == ("L", "P", "I")


def test_world_position_of_a_voxel_matches_the_affine(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    volume = load_nifti(_write(tmp_path / "a.nii.gz", data))
    geometry = volume.geometry
    ijk = np.array([3, 2, 5])
    ras = LPI_AFFINE @ np.r_[ijk, 1]
    # find the same voxel in the displayed array through its value, then map with scale/translate
    ((s, p, l),) = np.argwhere(volume.data == data[tuple(ijk)])
    world = np.array(geometry.origin) + np.array(geometry.spacing) * (s, p, l)
    assert world == pytest.approx([ras[2], -ras[1], -ras[0]])


def test_round_trip_keeps_shape_values_and_affine(tmp_path):
    rng = np.random.default_rng(1)
    image = rng.normal(size=(9, 8, 7)).astype(np.float32)
    labels = rng.integers(0, 4, size=(9, 8, 7)).astype(np.uint8)
    [(img_data, img_meta, img_type)] = read_nifti(_write(tmp_path / "scan.nii.gz", image))
    [(lab_data, lab_meta, lab_type)] = read_nifti(_write(tmp_path / "scan_seg.nii.gz", labels))
    assert (img_type, lab_type) == ("image", "labels")
    out_img = write_image(str(tmp_path / "out.nii.gz"), img_data, img_meta)[0]
    out_lab = write_labels(str(tmp_path / "out_labels.nii"), lab_data, lab_meta)[0]
    for written, original in ((out_img, image), (out_lab, labels)):
        back = nib.load(written)
        assert back.shape == original.shape
        np.testing.assert_array_equal(np.asanyarray(back.dataobj), original)
        np.testing.assert_allclose(back.affine, LPI_AFFINE)
    assert nib.load(out_lab).get_data_dtype() == np.uint8


def test_4d_file_gives_one_layer_per_channel_with_dataset_names(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text('{"modality": {"0": "FLAIR", "1": "T1", "2": "T2"}}')
    data = np.stack([np.full((4, 5, 6), c, np.int16) for c in range(3)], axis=-1)
    layers = read_nifti(_write(tmp_path / "imagesTr" / "case.nii.gz", data, np.eye(4)))
    assert [t for _, _, t in layers] == ["image"] * 3
    assert [m["name"] for _, m, _ in layers] == ["case [FLAIR]", "case [T1]", "case [T2]"]
    for c, (d, meta, _) in enumerate(layers):
        assert d.shape == (6, 5, 4) and np.all(d == c)
        assert meta["scale"] == meta["scale"] and meta["metadata"]["channel"] == c
    assert layers[0][1]["scale"] == layers[2][1]["scale"]
    assert layers[0][1]["translate"] == layers[2][1]["translate"]


def test_non_nifti_files_are_declined(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "image.png")) is None
    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.tif")]) is None


def test_corrupt_and_truncated_files_give_clear_errors(tmp_path, monkeypatch):
    good = _write(tmp_path / "good.nii.gz", np.ones((20, 20, 20), np.float32))
    raw = Path(good).read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(raw[: len(raw) // 2])
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not gzip at all" * 10)
    not_nifti = tmp_path / "text.nii.gz"
    not_nifti.write_bytes(gzip.compress(b"x" * 400))
    for path, words in (
        (truncated, "truncated or damaged"),
        (garbage, "cannot decompress"),
        (not_nifti, "not a NIfTI file"),
    ):
        reader = napari_get_reader(str(path))
        assert reader is not None
        with pytest.raises(NiftiError, match=words) as info:
            load_layers(str(path))
        assert path.name in str(info.value)
        shown = []
        monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
        assert reader(str(path)) == [(None,)]  # napari's "nothing to add": no traceback, no other reader
        assert shown == [str(info.value)]


def test_5d_or_2d_volumes_are_refused(tmp_path):
    with pytest.raises(NiftiError, match="expected a 3D volume"):
        load_nifti(_write(tmp_path / "flat.nii", np.ones((4, 4), np.float32)))


def test_label_maps_are_recognised_by_content_not_by_name(tmp_path):
    rng = np.random.default_rng(3)
    t1 = rng.integers(0, 3000, size=(12, 11, 10)).astype(np.int16)  # an int16 T1 named like a mask
    [(_, _, kind)] = read_nifti(_write(tmp_path / "T1_brain_masked.nii.gz", t1))
    assert kind == "image"
    mask = (rng.random((12, 11, 10)) > 0.5).astype(np.uint8)  # a 0/1 mask with an ordinary name
    [(_, _, kind)] = read_nifti(_write(tmp_path / "brain.nii.gz", mask))
    assert kind == "labels"
    parcels = rng.integers(0, 200, size=(12, 11, 10)).astype(np.int16)  # many labels: the name decides
    assert read_nifti(_write(tmp_path / "aparc_seg.nii.gz", parcels))[0][2] == "labels"
    assert read_nifti(_write(tmp_path / "ct.nii.gz", parcels))[0][2] == "image"
    signed = rng.integers(-5, 5, size=(12, 11, 10)).astype(np.int16)
    assert read_nifti(_write(tmp_path / "diff_seg.nii.gz", signed))[0][2] == "image"


def test_an_oblique_scan_says_it_is_shown_axis_aligned(tmp_path, monkeypatch):
    import napari_autofocus._reader as reader

    said = []
    monkeypatch.setattr(reader, "_warn", said.append)
    angle = np.deg2rad(15)
    oblique = np.eye(4)
    oblique[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    [(_, meta, _)] = read_nifti(_write(tmp_path / "tilted.nii.gz", np.ones((6, 6, 6), np.float32), oblique))
    assert "oblique" in meta["metadata"] and len(said) == 1 and "shown axis-aligned" in said[0]
    read_nifti(_write(tmp_path / "straight.nii.gz", np.ones((6, 6, 6), np.float32), np.eye(4)))
    assert len(said) == 1
