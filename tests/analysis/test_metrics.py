"""Metrics against answers computed by hand on tiny arrays (and one brute-force cross-check)."""

import math

import numpy as np
import pytest

from napari_autofocus.analysis import metrics


def _line(n, on):
    """A (1, 1, n) volume with the given voxels of its last axis set."""
    a = np.zeros((1, 1, n), dtype=bool)
    a[0, 0, list(on)] = True
    return a


def test_confusion_dice_sensitivity_specificity_by_hand():
    pred, truth = _line(10, [2, 3, 4, 5]), _line(10, [3, 4, 5, 6])
    c = metrics.confusion(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 1, 1, 5)
    assert metrics.dice(pred, truth) == pytest.approx(6 / 8)
    assert metrics.sensitivity(pred, truth) == pytest.approx(3 / 4)
    assert metrics.specificity(pred, truth) == pytest.approx(5 / 6)


def test_empty_rules():
    empty, some = _line(20, []), _line(20, [4])
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.dice(some, empty) == 0.0
    assert metrics.dice(empty, some) == 0.0
    assert metrics.hd95(empty, empty) == 0.0
    assert math.isnan(metrics.hd95(some, empty))
    assert math.isnan(metrics.hd95(empty, some))
    # penalty = image diagonal in mm: sqrt(1^2 + 1^2 + (20*0.5)^2)
    assert metrics.hd95(some, empty, spacing=(1, 1, 0.5), empty="penalty") == pytest.approx(math.sqrt(102))
    assert math.isnan(metrics.sensitivity(some, empty))
    assert math.isnan(metrics.specificity(some, np.ones_like(some)))


def test_hd95_interpolates_pooled_distances():
    # In a 1x1xN volume every mask voxel is surface. pred->truth: [0]; truth->pred: 0..9.
    # Pooled (11 values) = 0,0,1,...,9; 95th percentile at index 9.5 -> (8 + 9) / 2 = 8.5 voxels.
    pred, truth = _line(20, [0]), _line(20, range(10))
    assert metrics.hd95(pred, truth) == pytest.approx(8.5)
    assert metrics.hd95(truth, pred) == pytest.approx(8.5)
    assert metrics.hd95(pred, truth, spacing=(1, 1, 0.5)) == pytest.approx(4.25)


def test_hd95_shifted_cube_with_anisotropic_spacing():
    # A 3^3 cube and the same cube shifted one voxel along axis 0. Each surface has 26 voxels
    # (the cube minus its centre). Per direction: 16 distances of 0, one of 1 mm (the shifted
    # centre voxel, whose nearest surface neighbour is in-plane) and 9 of one axis-0 step.
    truth = np.zeros((7, 7, 7), bool)
    truth[2:5, 2:5, 2:5] = True
    pred = np.roll(truth, 1, axis=0)
    assert metrics.surface(truth).sum() == 26
    assert metrics.hd95(pred, truth) == pytest.approx(1.0)
    # with 2 mm along axis 0: pooled = 32 x 0, 2 x 1, 18 x 2 -> 95th percentile (index 48.45) = 2
    assert metrics.hd95(pred, truth, spacing=(2.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert metrics.dice(pred, truth) == pytest.approx(2 * 18 / 54)


def test_hd95_matches_brute_force():
    rng = np.random.default_rng(3)
    spacing = (1.5, 1.0, 0.7)
    for _ in range(3):
        pred = rng.random((6, 7, 8)) > 0.7
        truth = rng.random((6, 7, 8)) > 0.6
        ps = np.argwhere(metrics.surface(pred)) * spacing
        ts = np.argwhere(metrics.surface(truth)) * spacing
        d = np.sqrt(((ps[:, None, :] - ts[None, :, :]) ** 2).sum(-1))
        pooled = np.concatenate([d.min(axis=1), d.min(axis=0)])
        assert metrics.hd95(pred, truth, spacing) == pytest.approx(np.percentile(pooled, 95))


def test_regions_and_score_labels():
    labels = np.array([0, 1, 2, 3, 4, 4]).reshape(1, 1, 6)
    pred = np.array([0, 1, 2, 2, 4, 0]).reshape(1, 1, 6)
    regions = metrics.REGION_CONVENTIONS["brats2015"]
    scores = metrics.score_labels(pred, labels, regions)
    # whole: truth {1..5}, pred {1,2,3,4} -> tp 4, fn 1 -> 8/9; core: truth {1,3,4,5}, pred {1,4} -> 4/6
    assert scores["whole"]["dice"] == pytest.approx(8 / 9)
    assert scores["core"]["dice"] == pytest.approx(4 / 6)
    assert scores["enhancing"]["dice"] == pytest.approx(2 / 3)
    assert scores["enhancing"]["sensitivity"] == pytest.approx(0.5)
    assert metrics.REGION_CONVENTIONS["msd"] == {"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
    assert metrics.REGION_CONVENTIONS["brats2017"]["core"] == [1, 4]


def test_summarize_skips_nan():
    s = metrics.summarize([1.0, float("nan"), 0.5])
    assert s == {"mean": 0.75, "std": 0.25, "n": 2}


def test_metrics_table_keeps_columns_apart_when_distances_are_large():
    from src_training.evaluation import format_table

    stat = {"mean": 0.9123, "std": 0.0456, "n": 12}
    far = {"mean": 123.4567, "std": 98.7654, "n": 12}
    result = {
        "cases": ["a"] * 12,
        "conventions": metrics.CONVENTIONS,
        "summary": {
            "classes": {"enhancing tumour with a long name": {"dice": stat, "hd95": far, "sensitivity": stat,
                                                              "specificity": stat}},
            "regions": {"WT": {"dice": stat, "hd95": far, "sensitivity": stat, "specificity": {"n": 0}}},
        },
    }  # fmt: skip
    lines = format_table(result).splitlines()
    assert "counted in the mean" in lines[0]
    header, row = lines[2], lines[4]
    assert len(row) == len(header)
    assert "(12)  0.9123" in row and "123.4567 +- 98.7654 (12)" in row
    assert lines[5].rstrip().endswith("n/a")
