"""Preprocessing shared by training, validation and evaluation, with an on-disk cache.

Per case: :func:`napari_autofocus.inference.predictor.preprocess`, the function every prediction
goes through (normalisation as the card will say, then optional resampling to ``--spacing``), so
training, validation, ``evaluate`` and the plugin agree. The result, the per-class sampling
indices, the foreground box the predictor computes and (when resampled) the label on the scan's
own grid, which validation scores against, are cached as ``.npy`` files under a
key made of the files' paths, sizes and mtimes plus the settings, so epochs (and later runs with
the same settings) never re-read NIfTI; arrays are then opened memory-mapped, which lets
DataLoader workers share pages instead of copying volumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_autofocus.errors import DatasetError
from napari_autofocus.inference.normalization import DEFAULT_NORMALIZATION
from napari_autofocus.inference.predictor import Preprocessed, preprocess
from napari_autofocus.inference.regions import PlaneBoxes
from napari_autofocus.io.atomic import atomic_path, write_text

from .data import Case, Dataset, check_label_values, read_case
from .sampling import class_indices

CACHE_VERSION = 3  # 2: the predictor's preprocessing, foreground box and source-grid labels;
# 3: the foreground's box in each plane (what whole mode computes)


@dataclass
class PreparedCase:
    """A preprocessed case: arrays (memory-mapped from the cache) and the sampling indices."""

    name: str
    image: np.ndarray  # (C, D, H, W) float32, normalised (and resampled)
    label: np.ndarray | None  # (D, H, W) int16
    indices: dict[str, np.ndarray]  # category -> flat voxel indices (see sampling.class_indices)
    spacing: tuple[float, float, float]
    foreground_box: tuple = ()  # what the predictor computes (box of raw non-zero voxels)
    source_shape: tuple = ()
    source_spacing: tuple = ()
    source_label: np.ndarray | None = None  # the label on the scan's own grid (what evaluate scores)
    foreground_planes: PlaneBoxes | None = None  # the foreground's box in each plane (not resampled)

    def for_predictor(self) -> Preprocessed:
        """This case as :func:`napari_autofocus.inference.predictor.run_network` takes it."""
        return Preprocessed(
            image=self.image,
            roi=np.ones(self.image.shape[1:], dtype=bool),  # not needed to predict
            foreground_box=tuple(tuple(axis) for axis in self.foreground_box),
            spacing=self.spacing,
            source_shape=tuple(self.source_shape),
            source_spacing=tuple(self.source_spacing),
            foreground_planes=self.foreground_planes,
        )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-autofocus" / "preprocessed"


def cache_key(case: Case, settings: dict) -> str:
    """Hash of the case's files (path, size, mtime) and the preprocessing settings."""
    files = [p for p in [*case.images, case.label] if p is not None]
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    text = json.dumps({"files": stamp, "settings": settings, "version": CACHE_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, tmp.open("wb") as fh:
        np.save(fh, array)


def _load(folder: Path, name: str, meta: dict) -> PreparedCase:
    def array(file: str):
        return np.load(folder / file, mmap_mode="r") if (folder / file).exists() else None

    with np.load(folder / "indices.npz") as data:
        indices = {k: data[k] for k in data.files}
    label = array("label.npy")
    source_label = array("source_label.npy")
    planes = meta.get("foreground_planes")
    return PreparedCase(
        name, array("image.npy"), label, indices, tuple(meta["spacing"]),
        foreground_box=tuple(tuple(axis) for axis in meta["foreground_box"]),
        source_shape=tuple(meta["source_shape"]), source_spacing=tuple(meta["source_spacing"]),
        source_label=label if source_label is None else source_label,
        foreground_planes=PlaneBoxes.from_record(planes) if planes else None,
    )  # fmt: skip


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
            prepared.append(_load(folder, case.name, json.loads(meta_path.read_text())))
            continue
        if log:
            log(f"preprocessing {case.name}")
        raw = read_case(case, len(dataset.modalities))
        bad = int((~np.isfinite(raw.image)).sum())
        if bad:
            problems.append(
                f"case {case.name}: {', '.join(p.name for p in case.images)} has {bad} NaN or infinite "
                "voxel(s); fix or remove the case"
            )
            continue
        if raw.label is not None:
            problem = check_label_values(case.name, case.label, raw.label, dataset.label_values)
            if problem:
                problems.append(problem)
                continue
        done = preprocess(raw.image, raw.spacing, spec, target_spacing, raw.label)
        image, label, spacing = done.image, done.label, done.spacing
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*"):  # temporary files of a preprocessing that was killed
            if stale.is_file():
                stale.unlink(missing_ok=True)
        _save_npy(folder / "image.npy", image)
        if label is not None:
            _save_npy(folder / "label.npy", label.astype(np.int16))
            if done.resampled:
                _save_npy(folder / "source_label.npy", raw.label.astype(np.int16))
            indices = class_indices(label, done.roi, dataset.num_classes, max_indices, seed=case.name)
        else:
            indices = {}
        with atomic_path(folder / "indices.npz") as tmp, tmp.open("wb") as fh:
            np.savez(fh, **indices)
        meta = {
            "case": case.name, "spacing": list(spacing), "settings": settings, "shape": list(image.shape),
            "foreground_box": [list(axis) for axis in done.foreground_box],
            "foreground_planes": done.foreground_planes.record() if done.foreground_planes else None,
            "source_shape": list(done.source_shape), "source_spacing": list(done.source_spacing),
        }  # fmt: skip
        write_text(meta_path, json.dumps(meta, indent=1))  # written last: marks the entry complete
        prepared.append(_load(folder, case.name, meta))
    if problems:
        raise DatasetError(f"{dataset.root}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return prepared
