"""Cohort statistics of autofocus attention: which rates a layer uses inside each structure and lesion size.

What an interpretability study reports over many scans (per case, structure and autofocus layer):

- the mean weight per rate, the mean expected rate and the mean normalised entropy inside the
  structure (computed voxels only);
- the attention-mask agreement per rate: the probability that a random voxel of the structure
  has a larger weight for that rate than a random computed voxel outside it (ties count half),
  i.e. the ROC AUC of the weight as a detector of the structure (Mann-Whitney U). 0.5 means the
  rate's weight does not tell the structure from its surroundings; 1 means it picks it out; 0
  means the layer avoids that rate there;
- per lesion-size bin: lesions are the connected components (26-connected) of the foreground
  (labels > 0), sized by their equivalent diameter in mm; the bin holds the voxel sums, so a
  cohort's bins pool exactly.

NumPy and SciPy only. The AUC is exact: the weights are grouped by value (stored maps hold at
most a few ten thousand distinct float16 values), and the counts below each value give U.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from napari_autofocus.analysis import attention_maths

DEFAULT_SIZE_EDGES_MM = (10.0, 20.0, 40.0)


def size_bin_names(edges_mm: Sequence[float]) -> list[str]:
    """'< 10 mm', '10-20 mm', ..., '>= 40 mm' for increasing edges."""
    edges = [float(e) for e in edges_mm]
    if not edges:
        return ["all sizes"]
    text = [f"{e:g}" for e in edges]
    names = [f"< {text[0]} mm"]
    names += [f"{a}-{b} mm" for a, b in zip(text, text[1:], strict=False)]
    return names + [f">= {text[-1]} mm"]


@dataclass
class RankedWeights:
    """One rate's weights over the computed voxels, as codes into their sorted distinct values."""

    codes: np.ndarray  # (n computed voxels,) index into the sorted distinct values
    levels: int

    @classmethod
    def of(cls, weights: np.ndarray) -> RankedWeights:
        values, codes = np.unique(weights, return_inverse=True)
        return cls(codes.reshape(-1), len(values))

    def auc(self, inside: np.ndarray) -> float:
        """P(weight inside > weight outside) + P(tie) / 2 over the computed voxels; NaN if a side is empty."""
        n_in = int(inside.sum())
        n_out = inside.size - n_in
        if n_in == 0 or n_out == 0:
            return float("nan")
        count_in = np.bincount(self.codes[inside], minlength=self.levels).astype(np.float64)
        count_all = np.bincount(self.codes, minlength=self.levels).astype(np.float64)
        count_out = count_all - count_in
        below = np.cumsum(count_out) - count_out  # outside voxels with a smaller value
        return float((count_in * (below + 0.5 * count_out)).sum() / (n_in * n_out))


def layer_statistics(
    attention: np.ndarray,
    rates: Sequence[int],
    labels: np.ndarray,
    structures: Mapping[str, Sequence[int]],
) -> dict[str, dict]:
    """Per structure: mean weight per rate, expected rate, entropy and AUC per rate for one layer.

    ``attention`` is (K, D, H, W), NaN where not computed; ``structures`` maps a name to its label
    values. Structures with no computed voxel are left out."""
    computed = ~np.isnan(attention[0])
    flat_labels = labels[computed]
    weights = attention[:, computed].astype(np.float64)  # (K, n)
    expected = attention_maths.expected_rate(attention[:, computed][:, :, None, None], rates).reshape(-1)
    entropy = attention_maths.normalized_entropy(attention[:, computed][:, :, None, None]).reshape(-1)
    ranked = [RankedWeights.of(w) for w in attention[:, computed]]
    found = {}
    for name, values in structures.items():
        inside = np.isin(flat_labels, list(values))
        n = int(inside.sum())
        if n == 0:
            continue
        found[name] = {
            "voxels": n,
            "mean_weight": [float(v) for v in weights[:, inside].mean(axis=1)],
            "expected_rate": float(expected[inside].astype(np.float64).mean()),
            "entropy": float(entropy[inside].astype(np.float64).mean()),
            "auc": [r.auc(inside) for r in ranked],
        }
        found[name]["dominant_rate"] = int(rates[int(np.argmax(found[name]["mean_weight"]))])
    return found


def lesion_sizes(labels: np.ndarray, spacing: Sequence[float], edges_mm: Sequence[float]):
    """(bin index map, {bin: components}) of the foreground's 26-connected components by size.

    The bin map is -1 outside lesions; a lesion's size is the diameter of the sphere of its volume."""
    from scipy import ndimage

    components, count = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    bins = np.full(labels.shape, -1, np.int16)
    per_bin: dict[int, int] = {}
    if count == 0:
        return bins, per_bin
    voxel_mm3 = float(np.prod(spacing))
    sizes = np.bincount(components.reshape(-1), minlength=count + 1)[1:]
    diameters = (6.0 * sizes * voxel_mm3 / np.pi) ** (1.0 / 3.0)
    which = np.searchsorted(np.asarray(edges_mm, float), diameters, side="right").astype(np.int16)
    lookup = np.concatenate([[-1], which]).astype(np.int16)
    bins = lookup[components]
    for b in which.tolist():
        per_bin[b] = per_bin.get(b, 0) + 1
    return bins, per_bin


def size_statistics(attention: np.ndarray, bins: np.ndarray, per_bin: Mapping[int, int]) -> dict[int, dict]:
    """Per size bin, sums over its computed lesion voxels (weights per rate, entropy): poolable."""
    computed = ~np.isnan(attention[0])
    flat_bins = bins[computed]
    weights = attention[:, computed].astype(np.float64)
    entropy = attention_maths.normalized_entropy(attention[:, computed][:, :, None, None]).reshape(-1)
    found = {}
    for b, components in sorted(per_bin.items()):
        inside = flat_bins == b
        found[b] = {
            "components": int(components),
            "voxels": int(inside.sum()),
            "weight_sum": [float(v) for v in weights[:, inside].sum(axis=1)],
            "entropy_sum": float(entropy[inside].astype(np.float64).sum()),
        }
    return found


def pooled_size_means(entries: Sequence[Mapping], rates: Sequence[int]) -> dict | None:
    """Voxel-pooled mean weight, expected rate and entropy of size-bin sums from many cases."""
    voxels = sum(e["voxels"] for e in entries)
    if voxels == 0:
        return None
    weights = np.sum([e["weight_sum"] for e in entries], axis=0) / voxels
    return {
        "components": int(sum(e["components"] for e in entries)),
        "voxels": int(voxels),
        "mean_weight": [float(w) for w in weights],
        "expected_rate": float(np.dot(weights, rates)),
        "entropy": float(sum(e["entropy_sum"] for e in entries) / voxels),
    }


def mean_and_std(values: Sequence[float]) -> dict[str, float | int]:
    """Mean and standard deviation over cases (NaN ignored) and how many cases gave a number."""
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size)}
