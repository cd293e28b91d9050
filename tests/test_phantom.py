"""Phantom generator: deterministic, labelled by size, written in the dataset layouts we read."""

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from src_training.cli import main
from src_training.phantom import PhantomConfig, make_case

SMALL = PhantomConfig(shape=(64, 64, 64), large_radius=(10.0, 13.0), small_radius=(3.0, 5.0))


def test_same_seed_same_case_other_seed_other_case():
    a_img, a_lab = make_case(3, SMALL)
    b_img, b_lab = make_case(3, SMALL)
    c_img, _ = make_case(4, SMALL)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.allclose(a_img, c_img)


def test_label_is_decided_by_structure_size_not_intensity():
    image, labels = make_case(5, SMALL)
    assert set(np.unique(labels)) == {0, 1, 2}
    for value, (r_lo, r_hi) in ((1, SMALL.small_radius), (2, SMALL.large_radius)):
        components, n = ndimage.label(labels == value)
        sizes = ndimage.sum_labels(np.ones_like(labels), components, index=range(1, n + 1))
        radii = np.cbrt(sizes * 3 / (4 * np.pi))
        assert radii.min() > 0.6 * r_lo and radii.max() < 1.3 * r_hi
    # same appearance: away from partial-volume edges, both classes have the same mean intensity (10 %)
    small_core = ndimage.binary_erosion(labels == 1, iterations=1)
    large_core = ndimage.binary_erosion(labels == 2, iterations=1)
    for channel in image:
        small, large = channel[small_core].mean(), channel[large_core].mean()
        assert abs(small - large) / large < 0.1
    assert np.all(image[:, labels > 0] > 0)


def test_cli_writes_msd_and_nnunet_layouts(tmp_path, capsys):
    for layout in ("msd", "nnunet"):
        out = tmp_path / layout
        assert (
            main(
                [
                    "phantom",
                    "--out",
                    str(out),
                    "--cases",
                    "1",
                    "--seed",
                    "11",
                    "--size",
                    "48",
                    "--layout",
                    layout,
                ]
            )
            == 0
        )
        meta = json.loads((out / "dataset.json").read_text())
        assert meta["channel_names"] == {"0": "T1-like", "1": "T2-like"}
        assert meta["labels"] == {"background": 0, "small lesion": 1, "large lesion": 2}
        label = nib.load(out / "labelsTr" / "phantom_00011.nii.gz")
        assert label.shape == (48, 48, 48)
    assert nib.load(tmp_path / "msd" / "imagesTr" / "phantom_00011.nii.gz").shape == (48, 48, 48, 2)
    assert nib.load(tmp_path / "nnunet" / "imagesTr" / "phantom_00011_0001.nii.gz").shape == (48, 48, 48)


def test_cli_refuses_to_write_into_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["phantom", "--out", str(tmp_path), "--cases", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args", [["--cases", "0"], ["--size", "8"]])
def test_cli_rejects_bad_arguments(tmp_path, capsys, args):
    assert main(["phantom", "--out", str(tmp_path / "x"), *args]) == 2
    assert "error:" in capsys.readouterr().err
