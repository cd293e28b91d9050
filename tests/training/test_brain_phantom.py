"""The brain phantom: real MNI152 anatomy, simulated tumours in the BraTS 2023 labels, deterministic,
with the template's copyright notice shipped beside every dataset."""

import json

import nibabel as nib
import numpy as np
import pytest

from napari_autofocus.errors import DatasetError
from src_training import brain_anatomy
from src_training.brain_phantom_cases import (
    CHANNEL_NAMES,
    NOTICE_FILE,
    SIZE_CLASSES,
    BrainPhantomConfig,
    make_brain_case,
    write_brain_dataset,
)
from src_training.cli import main
from src_training.data import open_dataset


@pytest.fixture(scope="module")
def cases():
    return {seed: make_brain_case(seed) for seed in (0, 1, 2)}


def test_the_same_seed_gives_the_same_case_and_another_seed_another(cases):
    image, labels, affine, _ = make_brain_case(1)
    np.testing.assert_array_equal(image, cases[1][0])
    np.testing.assert_array_equal(labels, cases[1][1])
    assert not np.array_equal(cases[0][1], cases[1][1])
    assert np.allclose(affine, cases[0][2]) and np.allclose(np.diag(affine)[:3], 2.0)


def test_labels_follow_the_brats_2023_convention_and_nest_like_a_glioma(cases):
    for image, labels, _, _ in cases.values():
        assert image.shape == (4, *labels.shape) and labels.dtype == np.uint8
        counts = np.bincount(labels.ravel(), minlength=4)
        assert set(np.unique(labels)) <= {0, 1, 2, 3} and counts[2] > 0 and counts[3] > 0
        necrosis = labels == 1
        if necrosis.any():  # the necrotic core is wrapped in enhancing rim, never in oedema or brain
            from scipy import ndimage

            shell = ndimage.binary_dilation(necrosis) & ~necrosis
            assert np.isin(labels[shell], (1, 3)).mean() > 0.9


def test_tumours_lie_inside_the_brain_and_the_brain_is_the_real_template(cases):
    template = brain_anatomy.load_template()
    assert template.t1.shape == (197, 233, 189)
    for image, labels, _, _ in cases.values():
        brain = image[0] > 0
        assert brain.mean() > 0.15  # a whole brain, skull-stripped: zero outside
        assert brain[labels > 0].all()


def test_tumour_sizes_are_drawn_from_every_size_class(cases):
    firsts = [cases[seed][3][0].core_mm for seed in (0, 1, 2)]
    for radius, (low, high) in zip(firsts, SIZE_CLASSES, strict=True):
        assert low * 0.8**8 <= radius <= high  # a class's size, or smaller where it did not fit
    assert min(firsts) < 8 and max(firsts) > 18


def test_the_contrasts_show_what_they_are_named_for(cases):
    image, labels, _, _ = cases[2]
    t1, t1c, t2, flair = (image[c] for c in range(4))
    oedema, rim = labels == 2, labels == 3
    white = (labels == 0) & (t1 > np.percentile(t1[t1 > 0], 80))
    assert flair[oedema].mean() > 1.3 * flair[white].mean()  # oedema is bright on FLAIR
    assert t1c[rim].mean() > 1.3 * t1c[white].mean()  # the rim enhances on T1c only
    assert t1[rim].mean() < t1[white].mean()


def test_a_dataset_ships_the_template_notice_and_names_simulated_channels(tmp_path):
    out = write_brain_dataset(tmp_path / "brain", 1, 7, layout="nnunet")
    notice = (out / NOTICE_FILE).read_text()
    assert "Louis Collins, McConnell Brain Imaging Centre" in notice and "Permission to use, copy" in notice
    meta = json.loads((out / "dataset.json").read_text())
    assert NOTICE_FILE in meta["licence"] and meta["simulated"] is True
    assert [meta["channel_names"][str(i)] for i in range(4)] == list(CHANNEL_NAMES)
    assert all("simulated" in name for name in CHANNEL_NAMES[1:])
    dataset = open_dataset(out)
    assert dataset.regions == {"whole tumour": [1, 2, 3], "tumour core": [1, 3], "enhancing tumour": [3]}
    img = nib.load(dataset.cases[0].images[0])
    assert "simulated tumour on MNI152" in img.header["descrip"].tobytes().decode()


def test_the_command_refuses_what_it_cannot_do_cleanly(tmp_path, monkeypatch, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert main(["brain-phantom", "--out", str(taken)]) == 2
    assert "is not empty" in capsys.readouterr().err and (taken / "notes.txt").read_text() == "mine"
    assert main(["brain-phantom", "--out", str(tmp_path / "a"), "--spacing", "3"]) == 2
    assert "--spacing must be 0.5 to 2 mm" in capsys.readouterr().err
    monkeypatch.setattr(brain_anatomy.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match="pip install"):
        brain_anatomy.template_folder()
    assert main(["brain-phantom", "--out", str(tmp_path / "b")]) == 2
    assert "nilearn" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_finer_grids_are_refused_below_half_a_millimetre():
    with pytest.raises(ValueError, match="0.5 to 2 mm"):
        BrainPhantomConfig(spacing=0.25)


def test_generator_reproduces_the_bundled_brain_sample_bit_for_bit():
    """Models are trained on cases from this generator: changing it silently would make the sample
    (and their training data) unreproducible."""
    from repo_paths import REPO

    sample = REPO / "sample_data" / "brain"
    image, labels, affine, _ = make_brain_case(9000)
    stored = nib.load(sample / "imagesTr" / "brain_09000.nii.gz")
    np.testing.assert_array_equal(np.moveaxis(np.round(image * 1000), 0, -1), np.asarray(stored.dataobj))
    np.testing.assert_array_equal(
        labels, np.asarray(nib.load(sample / "labelsTr" / "brain_09000.nii.gz").dataobj)
    )
    assert np.allclose(stored.affine, affine)
    assert (sample / NOTICE_FILE).read_text() == brain_anatomy.MNI152_NOTICE


def test_a_brain_phantom_model_on_a_patient_scan_says_it_learnt_simulated_tumours(cases):
    from napari_autofocus.inference.scan_checks import Contract, check_phantom
    from napari_autofocus.nets.card import ModelCard

    card = ModelCard("AFN6", 4, 4, provenance={"dataset": "AutofocusBrainPhantom"})
    [warning] = check_phantom(Contract.from_card(card), "a patient's T1")
    assert "simulated tumours on the MNI152 template brain" in warning
    assert (
        check_phantom(Contract.from_card(card), "napari-autofocus synthetic phantom: simulated tumour") == []
    )
