"""Segmentation metrics on binary masks: Dice, HD95, sensitivity, specificity, plus BraTS regions.

NumPy/SciPy only (no torch) so the napari plugin's Compare widget and the training package score
segmentations with exactly the same code. Conventions (also printed in every evaluation report,
see :data:`CONVENTIONS`):

- **Dice** = 2 TP / (2 TP + FP + FN). Both masks empty -> 1.0; truth empty and prediction not
  (or the reverse) -> 0.0 (the BraTS / nnU-Net rule).
- **HD95** (MedPy style) = 95th percentile of the *pooled* symmetric surface distances in mm: the
  distances from every surface voxel of the prediction to the nearest truth surface voxel together
  with those from every truth surface voxel to the nearest prediction surface voxel. A surface is
  ``mask XOR binary_erosion(mask)`` with a face-connected (6-neighbour) structuring element, voxels
  on the array border count as surface; distances come from
  ``scipy.ndimage.distance_transform_edt(..., sampling=spacing)``. Both empty -> 0.0; exactly one
  empty -> NaN, or with ``empty="penalty"`` the image diagonal in mm (373.13 for BraTS 240x240x155 at
  1 mm, as nnU-Net reports it). MONAI instead takes the max of the two *directed* 95th percentiles
  (with its own surface and percentile rules): usually larger than this value, but not always (on
  one measured case MONAI gave 2.85 mm where this gives 3.00), so the two are not interchangeable.
- **Sensitivity** = TP / (TP + FN); NaN when the truth is empty (there is nothing to find).
- **Specificity** = TN / (TN + FP); NaN when the truth covers the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

CONVENTIONS = (
    "Dice = 2TP/(2TP+FP+FN); both empty -> 1 (counted in the mean), one empty -> 0. "
    "HD95 = 95th percentile of pooled symmetric surface distances in mm (MedPy style; surface = mask XOR "
    "6-connected erosion; EDT with voxel spacing); both empty -> 0, one empty -> NaN (or image diagonal "
    "with the 'penalty' rule). Sensitivity = TP/(TP+FN) (NaN if truth empty); "
    "specificity = TN/(TN+FP) (NaN if truth fills the image). Summaries: mean/std over cases, NaN ignored."
)

# Evaluation regions (name -> label values) of the common BraTS label conventions.
REGION_CONVENTIONS: dict[str, dict[str, list[int]]] = {
    "brats2015": {"whole": [1, 2, 3, 4], "core": [1, 3, 4], "enhancing": [4]},
    "brats2017": {"whole": [1, 2, 4], "core": [1, 4], "enhancing": [4]},
    "msd": {"whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]},
}


@dataclass(frozen=True)
class Confusion:
    """Voxel counts of a binary comparison."""

    tp: int
    fp: int
    fn: int
    tn: int


def _binary(mask) -> np.ndarray:
    return np.asarray(mask).astype(bool, copy=False)


def confusion(pred, truth) -> Confusion:
    """TP/FP/FN/TN counts of two same-shaped binary masks."""
    pred, truth = _binary(pred), _binary(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return Confusion(tp, fp, fn, truth.size - tp - fp - fn)


def dice(pred, truth) -> float:
    """Dice coefficient; both empty -> 1.0, exactly one empty -> 0.0."""
    c = confusion(pred, truth)
    denom = 2 * c.tp + c.fp + c.fn
    return 1.0 if denom == 0 else 2.0 * c.tp / denom


def sensitivity(pred, truth) -> float:
    """TP / (TP + FN); NaN when the truth is empty."""
    c = confusion(pred, truth)
    return float("nan") if c.tp + c.fn == 0 else c.tp / (c.tp + c.fn)


def specificity(pred, truth) -> float:
    """TN / (TN + FP); NaN when there are no negative voxels in the truth."""
    c = confusion(pred, truth)
    return float("nan") if c.tn + c.fp == 0 else c.tn / (c.tn + c.fp)


def surface(mask) -> np.ndarray:
    """Surface voxels: the mask minus its 6-connected erosion (border voxels count as surface)."""
    mask = _binary(mask)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(a, b, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance (mm) from every surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    a_surface, b_surface = surface(a), surface(b)
    spacing = None if spacing is None else tuple(float(s) for s in spacing)
    distance_to_b = ndimage.distance_transform_edt(~b_surface, sampling=spacing)
    return distance_to_b[a_surface]


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] | None = None) -> float:
    """Length of the image diagonal in mm: the HD95 'penalty' for a missed or false structure."""
    spacing = [1.0] * len(shape) if spacing is None else spacing
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def hd95(pred, truth, spacing: Sequence[float] | None = None, empty: str = "nan") -> float:
    """95th percentile of the pooled symmetric surface distances in mm (see module docstring).

    ``empty`` says what happens when exactly one mask is empty: ``"nan"`` (default) or
    ``"penalty"`` (the image diagonal in mm). Both empty is a perfect match: 0.0.
    """
    pred, truth = _binary(pred), _binary(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    if empty not in ("nan", "penalty"):
        raise ValueError(f"empty must be 'nan' or 'penalty', not {empty!r}")
    has_pred, has_truth = pred.any(), truth.any()
    if not has_pred and not has_truth:
        return 0.0
    if not has_pred or not has_truth:
        return image_diagonal(pred.shape, spacing) if empty == "penalty" else float("nan")
    pooled = np.concatenate(
        [surface_distances(pred, truth, spacing), surface_distances(truth, pred, spacing)]
    )
    return float(np.percentile(pooled, 95))


def region_mask(labels: np.ndarray, values: Iterable[int]) -> np.ndarray:
    """Binary mask of the voxels whose label is one of ``values``."""
    return np.isin(labels, np.asarray(list(values)))


def score_masks(pred, truth, spacing=None, hd_empty: str = "nan") -> dict[str, float]:
    """All metrics of one binary comparison, as a dict (also the voxel counts)."""
    c = confusion(pred, truth)
    return {
        "dice": dice(pred, truth),
        "hd95": hd95(pred, truth, spacing, empty=hd_empty),
        "sensitivity": sensitivity(pred, truth),
        "specificity": specificity(pred, truth),
        "tp": c.tp,
        "fp": c.fp,
        "fn": c.fn,
        "tn": c.tn,
    }


def score_labels(
    pred: np.ndarray,
    truth: np.ndarray,
    structures: Mapping[str, Iterable[int]],
    spacing: Sequence[float] | None = None,
    hd_empty: str = "nan",
) -> dict[str, dict[str, float]]:
    """Metrics per structure (name -> label values, a class or a region) of two label maps."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}")
    return {
        name: score_masks(region_mask(pred, values), region_mask(truth, values), spacing, hd_empty)
        for name, values in structures.items()
    }


def summarize(values: Iterable[float]) -> dict[str, float]:
    """Mean, std (population), and count over the finite values (NaN means 'undefined', skipped)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}
