"""Preprocessing shared by training, validation and evaluation, with an on-disk cache.

Per case: ROI = voxels where any channel is non-zero (or the whole image, as the normalisation spec
says), z-score per channel inside the ROI with :func:`napari_autofocus.normalization.normalize`
(outside = constant; the same function the plugin calls, so training and inference agree),
then optional resampling to a target spacing (``scipy.ndimage.zoom``, linear for images, nearest
for labels). The result and the per-class sampling indices are cached as ``.npy`` files under a
key made of the files' paths, sizes and mtimes plus the settings, so epochs (and later runs with
the same settings) never re-read NIfTI; arrays are then opened memory-mapped, which lets
DataLoader workers share pages instead of copying volumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_autofocus.errors import DatasetError
from napari_autofocus.normalization import DEFAULT_NORMALIZATION, normalize, roi_mask

from .checkpointing import publish
from .data import Case, Dataset, check_label_values, read_case
from .sampling import class_indices

CACHE_VERSION = 1


@dataclass
class PreparedCase:
    """A preprocessed case: arrays (memory-mapped from the cache) and the sampling indices."""

    name: str
    image: np.ndarray  # (C, D, H, W) float32, normalised (and resampled)
    label: np.ndarray | None  # (D, H, W) int16
    indices: dict[str, np.ndarray]  # category -> flat voxel indices (see sampling.class_indices)
    spacing: tuple[float, float, float]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-autofocus" / "preprocessed"


def preprocess_arrays(
    image: np.ndarray,
    spacing,
    spec: dict | None = None,
    target_spacing=None,
    label: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, tuple[float, float, float]]:
    """Normalise (and resample) one case; returns image, label, ROI mask and the new spacing."""
    spec = {**DEFAULT_NORMALIZATION, **(spec or {})}
    roi = roi_mask(image, spec.get("roi", "nonzero"))
    out = normalize(image, spec, roi)
    spacing = tuple(float(s) for s in spacing)
    if target_spacing is not None and not np.allclose(spacing, target_spacing, rtol=1e-3):
        zoom = [s / t for s, t in zip(spacing, target_spacing, strict=True)]
        out = np.stack([ndimage.zoom(c, zoom, order=1, mode="nearest", grid_mode=True) for c in out])
        roi = ndimage.zoom(roi.astype(np.uint8), zoom, order=0, mode="nearest", grid_mode=True).astype(bool)
        if label is not None:
            label = ndimage.zoom(label, zoom, order=0, mode="nearest", grid_mode=True)
        spacing = tuple(float(t) for t in target_spacing)
    return out.astype(np.float32, copy=False), label, roi, spacing


def resample_labels_to(labels: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resampling of a label map back to ``shape`` (prediction -> source grid)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    zoom = [n / o for n, o in zip(shape, labels.shape, strict=True)]
    out = ndimage.zoom(labels, zoom, order=0, mode="nearest", grid_mode=True)
    return out[tuple(slice(0, n) for n in shape)]


def cache_key(case: Case, settings: dict) -> str:
    """Hash of the case's files (path, size, mtime) and the preprocessing settings."""
    files = [p for p in [*case.images, case.label] if p is not None]
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    text = json.dumps({"files": stamp, "settings": settings, "version": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _save_npy(path: Path, array: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, array)
    publish(tmp, path)


def _load(folder: Path, name: str, spacing) -> PreparedCase:
    image = np.load(folder / "image.npy", mmap_mode="r")
    label = np.load(folder / "label.npy", mmap_mode="r") if (folder / "label.npy").exists() else None
    with np.load(folder / "indices.npz") as data:
        indices = {k: data[k] for k in data.files}
    return PreparedCase(name, image, label, indices, tuple(spacing))


def prepare_cases(
    dataset: Dataset,
    cases: list[Case],
    cache_dir: str | Path,
    spec: dict | None = None,
    target_spacing=None,
    max_indices: int = 100_000,
    log=None,
) -> list[PreparedCase]:
    """Preprocessed cases from the cache, computing the missing ones; label problems are collected."""
    spec = {**DEFAULT_NORMALIZATION, **(spec or {})}
    settings = {
        "normalization": spec,
        "target_spacing": None if target_spacing is None else [float(s) for s in target_spacing],
        "max_indices": max_indices,
        "labels": sorted(dataset.label_values),
    }
    cache_dir = Path(cache_dir)
    prepared, problems = [], []
    for case in cases:
        folder = cache_dir / f"{case.name}-{cache_key(case, settings)}"
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            prepared.append(_load(folder, case.name, json.loads(meta_path.read_text())["spacing"]))
            continue
        if log:
            log(f"preprocessing {case.name}")
        raw = read_case(case, len(dataset.modalities))
        if raw.label is not None:
            problem = check_label_values(case.name, case.label, raw.label, dataset.label_values)
            if problem:
                problems.append(problem)
                continue
        image, label, roi, spacing = preprocess_arrays(
            raw.image, raw.spacing, spec, target_spacing, raw.label
        )
        folder.mkdir(parents=True, exist_ok=True)
        _save_npy(folder / "image.npy", image)
        if label is not None:
            _save_npy(folder / "label.npy", label.astype(np.int16))
            indices = class_indices(label, roi, dataset.num_classes, max_indices, seed=case.name)
        else:
            indices = {}
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **indices)
        publish(tmp, folder / "indices.npz")
        meta = {"case": case.name, "spacing": list(spacing), "settings": settings, "shape": list(image.shape)}
        meta_path.write_text(json.dumps(meta, indent=1))  # written last: marks the entry complete
        prepared.append(_load(folder, case.name, spacing))
    if problems:
        raise DatasetError(f"{dataset.root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return prepared
