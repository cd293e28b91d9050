"""Dataset reading and checking, preprocessing cache, patch sampling, augmentation and losses."""

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from phantom_configs import PHANTOM_40

from napari_autofocus.errors import DatasetError
from src_training.augment import augment_patch
from src_training.data import check_geometry, open_dataset, read_case
from src_training.losses import SegmentationLoss, soft_dice_loss
from src_training.phantom_cases import write_dataset
from src_training.preprocess import prepare_cases
from src_training.sampling import PatchStream, choose_centre, class_indices, extract

SMALL = PHANTOM_40


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    msd = write_dataset(root / "msd", 2, 0, SMALL, layout="msd")
    nnunet = write_dataset(root / "nnunet", 2, 0, SMALL, layout="nnunet")
    return msd, nnunet


def test_both_layouts_read_the_same_cases(datasets):
    msd, nnunet = (open_dataset(p) for p in datasets)
    assert (msd.layout, nnunet.layout) == ("msd", "nnunet")
    for ds in (msd, nnunet):
        assert ds.modalities == ["T1-like", "T2-like"]
        assert ds.class_names == {0: "background", 1: "small lesion", 2: "large lesion"}
        assert [c.name for c in ds.cases] == ["phantom_00000", "phantom_00001"]
        check_geometry(ds)
    a, b = read_case(msd.cases[1], 2), read_case(nnunet.cases[1], 2)
    assert a.image.shape == (2, 40, 40, 40) and a.label.shape == (40, 40, 40)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)


def test_labels_in_value_to_name_direction(tmp_path, datasets):
    meta = json.loads((datasets[0] / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "1": "edema", "3": "enhancing"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    ds = open_dataset(tmp_path)
    assert ds.class_names == {0: "background", 1: "edema", 2: "class 2", 3: "enhancing"}
    assert ds.num_classes == 4


def _broken_copy(src, dst):
    """An nnU-Net copy of ``src`` with a shape mismatch in case 0 and a missing label in case 1."""
    import shutil

    shutil.copytree(src, dst)
    img = nib.load(dst / "imagesTr" / "phantom_00000_0001.nii.gz")
    small = nib.Nifti1Image(np.asarray(img.dataobj)[:-2], img.affine)
    nib.save(small, dst / "imagesTr" / "phantom_00000_0001.nii.gz")
    os.remove(dst / "labelsTr" / "phantom_00001.nii.gz")
    return dst


def test_geometry_problems_are_all_reported(tmp_path, datasets):
    broken = _broken_copy(datasets[1], tmp_path / "broken")
    with pytest.raises(DatasetError) as err:
        check_geometry(open_dataset(broken))
    message = str(err.value)
    assert "2 problem(s)" in message
    assert "case phantom_00000: phantom_00000_0001.nii.gz has shape (38, 40, 40)" in message
    assert "case phantom_00001: missing file" in message and "phantom_00001.nii.gz" in message


def test_label_value_outside_declared_set(tmp_path, datasets):
    import shutil

    root = tmp_path / "badlabel"
    shutil.copytree(datasets[0], root)
    path = root / "labelsTr" / "phantom_00001.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj).copy()
    data[5, 5, 5] = 7
    nib.save(nib.Nifti1Image(data, img.affine), path)
    ds = open_dataset(root)
    with pytest.raises(
        DatasetError, match=r"case phantom_00001: phantom_00001.nii.gz holds label value\(s\) \[7\]"
    ):
        prepare_cases(ds, ds.cases, tmp_path / "cache")


def test_preprocessing_normalises_and_caches(tmp_path, datasets):
    ds = open_dataset(datasets[0])
    messages = []
    first = prepare_cases(ds, ds.cases, tmp_path / "cache", log=messages.append)
    assert len(messages) == 2
    raw = read_case(ds.cases[0], 2)
    roi = np.any(raw.image != 0, axis=0)
    image = np.asarray(first[0].image)
    for c in range(2):
        assert abs(image[c][roi].mean()) < 1e-4 and abs(image[c][roi].std() - 1) < 1e-3
    assert np.all(image[:, ~roi] == 0)
    assert isinstance(first[0].image, np.memmap)
    messages.clear()
    again = prepare_cases(ds, ds.cases, tmp_path / "cache", log=messages.append)
    assert messages == []  # served from the cache, no NIfTI read
    np.testing.assert_array_equal(np.asarray(again[0].image), image)
    os.utime(ds.cases[0].label, ns=(1, 1))  # a changed file is a new cache key
    prepare_cases(ds, ds.cases, tmp_path / "cache", log=messages.append)
    assert messages == ["preprocessing phantom_00000"]


def test_class_indices_and_centre_crop_alignment():
    label = np.zeros((10, 10, 10), np.int16)
    label[2, 3, 4] = 1
    label[7, 7, 7] = 2
    roi = np.zeros_like(label, dtype=bool)
    roi[1:9, 1:9, 1:9] = True
    idx = class_indices(label, roi, 3, 1000, seed="x")
    assert idx["class_1"].tolist() == [2 * 100 + 3 * 10 + 4]
    assert idx["fg"].tolist() == [234, 777]
    assert idx["bg"].size == 8**3 - 2
    # image value = flat voxel index, so a patch says exactly where it was cut from
    image = np.arange(1000, dtype=np.float32).reshape(1, 10, 10, 10)
    x, y = extract(image, label, (2, 3, 4), patch=7, out=3, pad_value=-1)
    assert x.shape == (1, 7, 7, 7) and y.shape == (3, 3, 3)
    assert x[0, 3, 3, 3] == 234 and y[1, 1, 1] == 1  # both centred on the sampled voxel
    assert x[0, 0, 0, 0] == -1  # (-1, 0, 1) lies outside the volume: padded
    np.testing.assert_array_equal(y, label[1:4, 2:5, 3:6])


def test_sampling_proportions():
    label = np.zeros((12, 12, 12), np.int16)
    label[:2] = 1
    label[-1] = 2
    idx = class_indices(label, np.ones_like(label, bool), 3, 10_000, seed="y")
    rng = np.random.default_rng(0)
    fg = [label[choose_centre(idx, label.shape, "fg-bg", rng)] > 0 for _ in range(4000)]
    assert abs(np.mean(fg) - 0.5) < 0.03
    classes = [int(label[choose_centre(idx, label.shape, "per-class", rng)]) for _ in range(3000)]
    assert all(abs(np.mean(np.array(classes) == k) - 1 / 3) < 0.03 for k in range(3))


def test_patch_stream_is_deterministic_per_seed_rank_and_epoch(tmp_path, datasets):
    ds = open_dataset(datasets[0])
    cases = prepare_cases(ds, ds.cases, tmp_path / "cache")

    def batches(**kw):
        args = {"patch": 17, "out": 5, "batch_size": 2, "n_batches": 3, "seed": 0, "rank": 0, "epoch": 0} | kw
        return [b for b in PatchStream(cases, **args)]

    a, b = batches(), batches()
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    assert a[0][0].shape == (2, 2, 17, 17, 17) and a[0][1].shape == (2, 5, 5, 5)
    assert not torch.equal(batches(rank=1)[0][0], a[0][0])
    assert not torch.equal(batches(epoch=1)[0][0], a[0][0])
    loader = torch.utils.data.DataLoader(PatchStream(cases, **{"patch": 17, "out": 5, "batch_size": 2,
        "n_batches": 3, "seed": 0, "rank": 0, "epoch": 0}), batch_size=None, num_workers=1)  # fmt: skip
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(loader, a, strict=True))


def test_flips_keep_label_aligned():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 3, size=(5, 5, 5))
    image = np.zeros((1, 9, 9, 9), np.float32)
    image[0, 2:7, 2:7, 2:7] = label
    seen = set()
    for _ in range(12):
        x, y = augment_patch(image, label, rng, intensity_scale=0.0)
        np.testing.assert_array_equal(x[0, 2:7, 2:7, 2:7], y)
        seen.add(tuple(np.array_equal(y, np.flip(label, a)) for a in range(3)))
    assert len(seen) > 1
    x, _ = augment_patch(np.ones((2, 3, 3, 3), np.float32), label[:1, :1, :1], rng, (), 0.5, 0.1, 0.2)
    assert np.all(np.abs(x - 1) <= 0.1 + 0.2 + 1e-6) and len(np.unique(x)) == 2  # one gain/offset per channel


def test_losses_by_hand():
    target = torch.tensor([[[[0, 1], [1, 2]]]])  # (1, 1, 2, 2)
    perfect = F.one_hot(target, 3).movedim(-1, 1).float() * 100.0
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 3, 1, 2, 2)
    # p = 1/3 everywhere: class 1: 2*(2/3) / (4/3 + 2) = 0.4; class 2: 2*(1/3)/(4/3 + 1) = 2/7
    expected = 1 - (0.4 + 2 / 7) / 2
    assert soft_dice_loss(uniform, target).item() == pytest.approx(expected, rel=1e-4)
    assert SegmentationLoss("ce")(uniform, target).item() == pytest.approx(np.log(3), rel=1e-6)
    both = SegmentationLoss("ce+dice")(uniform, target).item()
    assert both == pytest.approx(np.log(3) + expected, rel=1e-4)
