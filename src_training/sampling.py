"""Class-balanced patch sampling for valid-convolution networks.

The input patch is S^3 but the network only predicts its central ``output_size(S)``^3, so the
label target is that centre crop, centred on the sampled voxel. Patches that reach past the
volume are filled with the normalisation's outside value (labels with background), which is the
same as padding the volume by half a patch, without copying it.

Where centres come from (per-case index lists computed once at preprocessing, see
:func:`class_indices`):
- ``"fg-bg"`` (the reference): with probability ``fg_fraction`` (0.5) a foreground voxel, else an
  ROI voxel of label 0;
- ``"per-class"`` (the paper's pelvic setting, DeepMedic type 3): every class present in the case,
  background included, equally often.

Randomness: each DataLoader worker draws from ``numpy.random.default_rng([seed + rank*1000 +
worker, epoch])`` and makes the batches ``worker, worker + n_workers, ...`` of the epoch, and the
loader returns batches in that round-robin order; so an epoch is a pure function of (seed, rank,
worker count, epoch) and resuming at an epoch boundary is exact.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .augment import augment_patch

SAMPLING_MODES = ("fg-bg", "per-class")


def class_indices(
    label: np.ndarray, roi: np.ndarray, num_classes: int, max_per_category: int, seed: str
) -> dict[str, np.ndarray]:
    """Flat voxel indices per sampling category: ``fg``, ``bg`` (label 0 in the ROI), ``class_<k>``.

    Large categories are subsampled (uniformly, deterministically per case) to ``max_per_category``
    so a BraTS case costs a few hundred kB instead of tens of MB.
    """
    rng = np.random.default_rng(zlib.crc32(seed.encode()))
    flat = np.asarray(label).reshape(-1)
    roi_flat = np.asarray(roi).reshape(-1)

    def pick(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        if idx.size > max_per_category:
            idx = np.sort(rng.choice(idx, size=max_per_category, replace=False))
        return idx.astype(np.int64)

    bg = flat == 0
    out = {"fg": pick(flat > 0), "bg": pick(bg & roi_flat) if (bg & roi_flat).any() else pick(bg)}
    out["class_0"] = out["bg"]
    for k in range(1, num_classes):
        out[f"class_{k}"] = pick(flat == k)
    return out


def choose_centre(indices: dict[str, np.ndarray], shape, mode: str, rng, fg_fraction: float = 0.5):
    """One patch centre (voxel coordinates) for a case, following the sampling mode."""
    if mode == "fg-bg":
        use_fg = rng.random() < fg_fraction
        pool = indices["fg"] if (use_fg and indices["fg"].size) or not indices["bg"].size else indices["bg"]
    elif mode == "per-class":
        present = [k for k in sorted(indices) if k.startswith("class_") and indices[k].size]
        pool = indices[present[rng.integers(len(present))]]
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
    if pool.size == 0:
        return tuple(int(rng.integers(n)) for n in shape)
    return np.unravel_index(int(pool[rng.integers(pool.size)]), shape)


def crop(array: np.ndarray, start, size, fill) -> np.ndarray:
    """``array[..., start:start+size]`` over the last three axes, filling what lies outside with ``fill``."""
    lead = array.shape[:-3]
    out = np.full((*lead, *size), fill, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[-3:], strict=True):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(..., *dst)] = array[(..., *src)]
    return out


def extract(image, label, centre, patch: int, out: int, pad_value: float):
    """Input patch (C, S, S, S) and centred label target (O, O, O) around ``centre``."""
    start = [int(c) - patch // 2 for c in centre]
    margin = (patch - out) // 2
    x = crop(image, start, (patch,) * 3, pad_value)
    y = crop(label, [s + margin for s in start], (out,) * 3, 0) if label is not None else None
    return x, y


class PatchStream(IterableDataset):
    """One epoch of training batches for one rank: ``n_batches`` batches of ``batch_size`` patches."""

    def __init__(
        self,
        cases,
        *,
        patch: int,
        out: int,
        batch_size: int,
        n_batches: int,
        seed: int,
        rank: int,
        epoch: int,
        mode: str = "fg-bg",
        fg_fraction: float = 0.5,
        pad_value: float = 0.0,
        augment: dict | None = None,
    ) -> None:
        super().__init__()
        if mode not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {mode!r}; expected one of {SAMPLING_MODES}")
        self.cases = cases
        self.patch, self.out = patch, out
        self.batch_size, self.n_batches = batch_size, n_batches
        self.seed, self.rank, self.epoch = seed, rank, epoch
        self.mode, self.fg_fraction, self.pad_value = mode, fg_fraction, pad_value
        self.augment = augment or {}

    def batch_seed(self, index: int) -> list[int]:
        """Each batch has its own generator, so the patches do not depend on how many DataLoader
        workers share the epoch (a run resumed with another --workers draws the same patches)."""
        return [self.seed + self.rank * 1000, self.epoch, index]

    def batch(self, rng) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(self.batch_size):
            case = self.cases[int(rng.integers(len(self.cases)))]
            shape = case.label.shape
            centre = choose_centre(case.indices, shape, self.mode, rng, self.fg_fraction)
            x, y = extract(case.image, case.label, centre, self.patch, self.out, self.pad_value)
            x, y = augment_patch(x, y, rng, **self.augment)
            xs.append(x)
            ys.append(y)
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # the DataLoader takes one batch from each worker in turn: batches arrive in index order
        for index in range(worker, self.n_batches, n_workers):
            yield self.batch(np.random.default_rng(self.batch_seed(index)))

    def __len__(self) -> int:
        return self.n_batches
