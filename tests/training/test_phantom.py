"""Phantom generator: deterministic, labelled by size, written in the dataset layouts we read."""

import json

import nibabel as nib
import numpy as np
import pytest
from repo_paths import REPO
from scipy import ndimage

from src_training.cli import main
from src_training.phantom_cases import (
    STYLES,
    PhantomConfig,
    grow_lobes,
    make_case,
    make_case_with_parts,
    write_dataset,
)

SAMPLE = REPO / "sample_data" / "phantom"
BLOBS = PhantomConfig(shape=(64, 64, 64), style="blobs", large_radius=(10.0, 13.0), small_radius=(3.0, 5.0))
TINY = PhantomConfig(shape=(40, 40, 40), large_lobes=(4, 5), n_large=(1, 1), n_small=(1, 2))
BASIC_VIEW = 29  # BASIC's receptive field edge in voxels


def _components(labels, value):
    components, n = ndimage.label(labels == value)
    sizes = ndimage.sum_labels(np.ones_like(labels), components, index=range(1, n + 1))
    extents = [max(s.stop - s.start for s in box) for box in ndimage.find_objects(components)]
    return sizes, extents


def test_same_seed_same_case_other_seed_other_case():
    a_img, a_lab = make_case(3, TINY)
    b_img, b_lab = make_case(3, TINY)
    c_img, _ = make_case(4, TINY)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert not np.allclose(a_img, c_img)


def test_generator_reproduces_the_bundled_sample_bit_for_bit():
    """The bundled models were trained on cases from this generator: changing it silently would
    make their training data unreproducible."""
    image, labels = make_case(9000)
    stored = nib.load(SAMPLE / "imagesTr" / "phantom_09000.nii.gz").get_fdata()
    np.testing.assert_array_equal(np.moveaxis(np.round(image), 0, -1), stored)
    np.testing.assert_array_equal(labels, nib.load(SAMPLE / "labelsTr" / "phantom_09000.nii.gz").get_fdata())


def test_cluster_labels_follow_structure_size_beyond_basics_view():
    image = nib.load(SAMPLE / "imagesTr" / "phantom_09000.nii.gz").get_fdata()
    labels = np.asarray(nib.load(SAMPLE / "labelsTr" / "phantom_09000.nii.gz").dataobj).astype(np.uint8)
    small_sizes, _ = _components(labels, 1)
    large_sizes, large_extents = _components(labels, 2)
    assert len(small_sizes) >= 4 and len(large_sizes) >= 2
    assert small_sizes.max() < large_sizes.min()  # the label is the size of the whole structure
    assert min(large_extents) > BASIC_VIEW  # a large structure never fits in BASIC's view
    assert np.all(image[labels > 0] > 0)


def test_both_classes_look_the_same_at_equal_depth():
    """Without bias field, texture and noise, a voxel's intensity depends only on how deep it lies
    inside a structure (partial volume dims every thin part), never on the structure's class."""
    clean = PhantomConfig(shape=(64, 64, 64), large_lobes=(6, 8), n_large=(1, 1), bias=0, texture=0, noise=0)
    image, labels = make_case(2, clean)
    depth = ndimage.distance_transform_edt(labels > 0)
    for lo, hi in ((1, 2), (2, 3)):
        band = (depth > lo) & (depth <= hi)
        for channel in image:
            small, large = channel[band & (labels == 1)].mean(), channel[band & (labels == 2)].mean()
            assert abs(small - large) / large < 0.02


def test_grown_lobes_touch_and_do_not_swallow_each_other():
    centres, radii = grow_lobes(np.random.default_rng(0), 12, (3.0, 6.5))
    assert centres.shape == (12, 3) and np.all((radii >= 3.0) & (radii <= 6.5))
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    pair_sum = radii[:, None] + radii[None]
    assert np.all((distances < pair_sum).any(axis=1))  # every lobe overlaps another: one structure
    assert np.all(distances > 0.9 * np.maximum(radii[:, None], radii[None]) - 1e-9)


def test_masses_have_a_solid_core_and_blobs_keep_their_radii():
    _, labels = make_case(5, PhantomConfig(shape=(64, 64, 64), style="masses", n_large=(1, 1)))
    depth = ndimage.distance_transform_edt(labels > 0)
    assert depth[labels == 2].max() >= 6 > depth[labels == 1].max() - 1
    _, labels = make_case(5, BLOBS)
    for value, (r_lo, r_hi) in ((1, BLOBS.small_radius), (2, BLOBS.large_radius)):
        sizes, _ = _components(labels, value)
        radii = np.cbrt(sizes * 3 / (4 * np.pi))
        assert radii.min() > 0.6 * r_lo and radii.max() < 1.3 * r_hi


def test_parallel_generation_writes_the_same_files(tmp_path):
    write_dataset(tmp_path / "serial", cases=2, seed=20, config=TINY)
    write_dataset(tmp_path / "parallel", cases=2, seed=20, config=TINY, jobs=2)
    for sub in ("imagesTr/phantom_00021.nii.gz", "labelsTr/phantom_00020.nii.gz"):
        serial, parallel = (np.asarray(nib.load(tmp_path / d / sub).dataobj) for d in ("serial", "parallel"))
        np.testing.assert_array_equal(serial, parallel)
    assert (tmp_path / "serial" / "dataset.json").read_text() == (
        tmp_path / "parallel" / "dataset.json"
    ).read_text()


def test_cli_writes_msd_and_nnunet_layouts(tmp_path, capsys):
    for layout in ("msd", "nnunet"):
        out = tmp_path / layout
        args = [
            "phantom",
            "--out",
            str(out),
            "--cases",
            "1",
            "--seed",
            "11",
            "--size",
            "72",  # the clusters style places its lesions at once from 72^3 (64^3 takes many tries)
            "--layout",
            layout,
        ]
        assert main(args) == 0
        meta = json.loads((out / "dataset.json").read_text())
        assert meta["channel_names"] == {"0": "T1-like", "1": "T2-like"}
        assert meta["labels"] == {"background": 0, "small lesion": 1, "large lesion": 2}
        assert meta["phantom"]["config"]["style"] == "clusters"
        label = nib.load(out / "labelsTr" / "phantom_00011.nii.gz")
        assert label.shape == (72, 72, 72)
    assert nib.load(tmp_path / "msd" / "imagesTr" / "phantom_00011.nii.gz").shape == (72, 72, 72, 2)
    assert nib.load(tmp_path / "nnunet" / "imagesTr" / "phantom_00011_0001.nii.gz").shape == (72, 72, 72)


def test_cli_refuses_to_write_into_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["phantom", "--out", str(tmp_path), "--cases", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "args",
    [
        ["--cases", "0"],
        ["--size", "8"],
        ["--jobs", "0"],
        ["--size", "48"],
        ["--style", "masses", "--size", "60"],
        ["--style", "nodules", "--size", "96"],
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, args):
    assert main(["phantom", "--out", str(tmp_path / "x"), *args]) == 2
    assert "error:" in capsys.readouterr().err


def test_cli_names_the_styles_when_given_an_unknown_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["phantom", "--out", str(tmp_path / "x"), "--style", "cubes"])
    assert exit_info.value.code == 2
    listed = ", ".join(f"'{style}'" for style in STYLES)  # the CLI offers every style the generator has
    assert f"invalid choice: 'cubes' (choose from {listed})" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_config_rejects_an_unknown_style():
    with pytest.raises(ValueError, match="phantom style must be one of"):
        PhantomConfig(style="cubes")


@pytest.fixture(scope="module")
def nodule_cases():
    config = PhantomConfig(shape=(112, 112, 112), style="nodules")
    return [make_case_with_parts(seed, config) for seed in range(3)]


def test_nodules_every_lesion_has_a_nodule_and_every_case_a_lookalike(nodule_cases):
    for _, labels, parts in nodule_cases:
        lesions, n_lesions = ndimage.label(labels == 2)
        assert n_lesions >= 1
        for index in range(1, n_lesions + 1):
            assert (parts["nodule"] & (lesions == index)).sum() >= 20  # a nodule of radius 2.5-4 inside
        assert not (parts["nodule"] & (labels != 2)).any()  # the nodule is part of the lesion
        assert parts["look-alike"].sum() > 10_000  # at least one look-alike mass, as big as a lesion
        assert (labels[parts["look-alike"]] == 0).all()  # look-alikes are background


def test_nodules_lookalikes_match_lesions_in_size_and_look(nodule_cases):
    lesion_contrast, lookalike_contrast, lesion_radii, lookalike_radii = [], [], [], []
    for image, labels, parts in nodule_cases:
        nodule_zone = ndimage.binary_dilation(parts["nodule"], iterations=3)
        body = ndimage.binary_erosion(labels == 2, iterations=2) & ~nodule_zone
        lookalike = ndimage.binary_erosion(parts["look-alike"], iterations=2)
        # the bias field varies within a case: compare against the tissue right around each mass
        for mask, out in ((body, lesion_contrast), (lookalike, lookalike_contrast)):
            shell = ndimage.binary_dilation(mask, iterations=8) & (labels == 0) & ~parts["look-alike"]
            shell &= image[0] > 0
            out.append([image[c][mask].mean() / image[c][shell].mean() for c in range(2)])
        for mask, radii in ((labels == 2, lesion_radii), (parts["look-alike"], lookalike_radii)):
            components, n = ndimage.label(mask)
            volumes = ndimage.sum_labels(mask, components, index=range(1, n + 1))
            radii.extend(np.cbrt(3 * volumes / (4 * np.pi)))
    np.testing.assert_allclose(
        np.mean(lesion_contrast, axis=0), np.mean(lookalike_contrast, axis=0), rtol=0.06
    )
    assert np.mean(lesion_radii) == pytest.approx(
        np.mean(lookalike_radii), rel=0.1
    )  # size gives nothing away


def test_nodules_config_sizes_the_volume_and_refuses_too_small_ones():
    assert PhantomConfig(style="nodules").shape == (112, 112, 112)
    assert PhantomConfig().shape == (96, 96, 96)
    with pytest.raises(ValueError, match="at least 112 voxels per side"):
        PhantomConfig(style="nodules", shape=(96, 96, 96))
    with pytest.raises(ValueError, match="two masses do not fit"):
        make_case(0, PhantomConfig(style="nodules", mass_radius=(40.0, 45.0)))


def test_nodules_leave_much_of_each_lesion_out_of_basic_view_but_not_small_ones(nodule_cases):
    far = []
    for _, labels, parts in nodule_cases:
        # BASIC sees the 29^3 window around a voxel: the chessboard distance says what is outside it
        distance = ndimage.distance_transform_cdt(~parts["nodule"], metric="chessboard")
        far.append((distance[labels == 2] > BASIC_VIEW // 2).mean())
        _, extents = _components(labels, 1)
        assert max(extents) <= BASIC_VIEW  # a whole small lesion fits in BASIC's view
    assert np.mean(far) > 0.15  # no nodule in BASIC's view for about a fifth of the lesion voxels


def test_cli_sizes_nodules_at_112_by_default(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "n"), "--cases", "1", "--style", "nodules"]) == 0
    meta = json.loads((tmp_path / "n" / "dataset.json").read_text())
    assert meta["phantom"]["config"]["shape"] == [112, 112, 112]
    assert meta["phantom"]["config"]["style"] == "nodules"
