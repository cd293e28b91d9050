"""Maps derived from autofocus attention, for reading what scale the network used where.

All inputs are (K, D, H, W) attention arrays on the image grid (NaN where not computed) and the
layer's K dilation rates. NumPy only: the napari explorer recomputes these without torch.

- arg-max rate: the dilation rate with the largest weight;
- expected rate: sum_k a_k r_k, a continuous "how far this layer looks";
- normalised entropy: H(a) / log K, 0 = one rate chosen, 1 = all rates equal;
- zoom: the effective receptive field along the network, RF = RF_min + sum_l (k-1)(E_l[r] - r_min,l),
  in voxels and millimetres. Each layer's expected rate is read at the same voxel; it is an
  interpretable summary of how much context the network drew on there, not an exact gradient RF.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


def argmax_rate(attention: np.ndarray, rates: Sequence[int]) -> np.ndarray:
    """(D, H, W) int16 map of the rate with the largest weight; 0 where attention is NaN."""
    valid = ~np.isnan(attention[0])
    index = np.argmax(np.nan_to_num(attention.astype(np.float32), nan=-1.0), axis=0)
    out = np.asarray(rates, dtype=np.int16)[index]
    out[~valid] = 0
    return out


def expected_rate(attention: np.ndarray, rates: Sequence[int]) -> np.ndarray:
    """(D, H, W) float32: sum_k a_k * r_k (NaN where not computed)."""
    r = np.asarray(rates, dtype=np.float32).reshape(-1, *([1] * (attention.ndim - 1)))
    return (attention.astype(np.float32) * r).sum(axis=0)


def normalized_entropy(attention: np.ndarray) -> np.ndarray:
    """(D, H, W) float32 in [0, 1]: entropy of the attention divided by log K."""
    a = np.clip(attention.astype(np.float32), 1e-12, 1.0)
    entropy = -(a * np.log(a)).sum(axis=0) / np.log(attention.shape[0])
    entropy[np.isnan(attention[0])] = np.nan
    return np.clip(entropy, 0.0, 1.0, where=~np.isnan(entropy), out=entropy)


def receptive_field(receptive_field_min, rates, min_rates, kernel_sizes=3):
    """The one receptive-field formula: RF = RF_min + sum_i (k_i - 1) * (r_i - r_min,i).

    ``rates[i]``: the effective (attention-weighted) rate of autofocus layer i, a number or a map;
    ``min_rates[i]`` its smallest rate, ``kernel_sizes`` its kernel (one for all, or per layer).
    Layers not given count at their smallest rate (their share is in ``receptive_field_min``)."""
    kernels = [kernel_sizes] * len(min_rates) if np.isscalar(kernel_sizes) else list(kernel_sizes)
    total = receptive_field_min
    for rate, low, k in zip(rates, min_rates, kernels, strict=True):
        total = total + (k - 1) * (rate - low)
    return total


def zoom_voxels(
    attention: Mapping[str, np.ndarray],
    rates: Mapping[str, Sequence[int]],
    receptive_field_min: int,
    kernel_size: int = 3,
) -> np.ndarray:
    """(D, H, W) effective receptive field in voxels from all given autofocus layers."""
    if not attention:
        raise ValueError("zoom needs the attention of at least one autofocus layer")
    names = list(attention)
    expected = [expected_rate(attention[n], rates[n]) for n in names]
    return receptive_field(receptive_field_min, expected, [min(rates[n]) for n in names], kernel_size)


def zoom_mm(zoom: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Receptive-field edge in mm: voxels times the geometric-mean voxel size."""
    return zoom * float(np.prod(spacing)) ** (1 / 3)


@dataclass(frozen=True)
class ClassIndex:
    """Where each class lies among the computed voxels: built once, used for every layer's means."""

    keep: np.ndarray  # computed voxels whose label is one of the classes' range
    values: np.ndarray  # their labels
    counts: np.ndarray  # voxels per label value
    classes: tuple[int, ...]

    @classmethod
    def build(cls, computed: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> ClassIndex:
        classes = tuple(int(c) for c in classes)
        top = max(classes, default=0)
        keep = computed & (labels >= 0) & (labels <= top)
        values = labels[keep].astype(np.intp)
        return cls(keep, values, np.bincount(values, minlength=top + 1), classes)


def mean_attention_per_class(
    attention: np.ndarray, labels: np.ndarray, classes: Sequence[int], index: ClassIndex | None = None
) -> dict[int, np.ndarray]:
    """Mean weight per rate inside each class (classes absent from ``labels`` are left out).

    One pass of ``np.bincount`` per rate instead of a mask per class, and the class index can be
    shared by all autofocus layers of a result: the explorer redraws this chart on the GUI thread."""
    if index is None:
        index = ClassIndex.build(~np.isnan(attention[0]), labels, classes)
    size = len(index.counts)
    sums = np.stack(
        [
            np.bincount(index.values, weights=a[index.keep].astype(np.float64), minlength=size)
            for a in attention
        ]
    )
    return {c: sums[:, c] / index.counts[c] for c in index.classes if 0 <= c < size and index.counts[c] > 0}


def seam_score(rate_map: np.ndarray, borders: Sequence[Sequence[int]]) -> float:
    """How much a map jumps across given planes compared with elsewhere: 1.0 means no seams.

    ``borders[axis]`` lists planes ``b`` where a tile border falls between planes ``b - 1`` and
    ``b``. For every pair of neighbouring planes the mean absolute change is taken (NaN voxels,
    outside what was computed, are ignored); the score is the mean change across border planes
    divided by the median change across all other planes. Engine artefacts show as scores far
    above 1 (tiles that zero-pad at their borders scored 2-11 on a real scan).
    """
    at_border, elsewhere = [], []
    values = np.asarray(rate_map, dtype=np.float32)
    for axis, planes in enumerate(borders):
        steps = np.abs(np.diff(values, axis=axis))
        other = tuple(a for a in range(values.ndim) if a != axis)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN planes outside the crop
            change = np.nanmean(steps, axis=other)
        wanted = {b - 1 for b in planes if 0 < b < values.shape[axis]}
        for i, c in enumerate(change):
            if np.isfinite(c):
                (at_border if i in wanted else elsewhere).append(float(c))
    if not at_border or not elsewhere:
        raise ValueError("no computed border planes (or no other planes) to compare")
    return float(np.mean(at_border) / max(np.median(elsewhere), 1e-12))
