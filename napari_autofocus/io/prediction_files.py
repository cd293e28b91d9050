"""The files a prediction is saved as: one naming scheme and one writer for ``predict`` and Export.

The names follow nnU-Net's convention so that ``evaluate --pred`` scores a predictions folder
without renaming: the label map is ``<stem>.nii.gz``; beside it ``<stem>_probabilities.nii.gz``,
per autofocus layer ``<stem>_<AF>_attention.nii.gz`` (4D, one volume per rate) and the derived
``<stem>_<AF>_argmax_rate``, ``_expected_rate`` and ``_entropy`` maps, ``<stem>_zoom_mm.nii.gz``,
and ``<stem>_prediction.json`` (how the prediction was made). Every volume is written with the
source scan's geometry. A stem's files are written into a hidden staging folder first and moved
into place with the JSON last: the JSON marks the stem complete. A killed write leaves its staging
folder behind, which is how the next write of that stem (or ``evaluate --pred``) knows that files
without a JSON are an interrupted run's and not somebody's own; those are removed then. Overwriting
removes the old JSON first, so two runs never pass for one, and also removes the stem's files that
the new run does not write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_autofocus.analysis import attention as maps
from napari_autofocus.errors import AutofocusError
from napari_autofocus.io.atomic import write_text
from napari_autofocus.io.scratch import BIG_ARRAY_BYTES, is_scratch, release, scratch_array, slabs

KINDS = ("labels", "probabilities", "attention", "derived")
DERIVED = ("argmax_rate", "expected_rate", "entropy")


@dataclass
class OutputFile:
    """One volume to write; ``make`` computes the array only when the file is written."""

    filename: str
    make: Callable[[], np.ndarray]
    is_label: bool = False


def labels_name(stem: str) -> str:
    return f"{stem}.nii.gz"


def info_name(stem: str) -> str:
    return f"{stem}_prediction.json"


def _stem_pattern(stem: str) -> re.Pattern:
    maps_ = "|".join(DERIVED)
    return re.compile(
        rf"^{re.escape(stem)}(_probabilities|_AF\d+_(attention|{maps_})|_zoom_mm)?\.nii(\.gz)?$"
        rf"|^{re.escape(stem)}_prediction\.json$"
    )


def existing_outputs(folder: str | Path, stem: str) -> list[Path]:
    """Files in ``folder`` that an earlier prediction saved under ``stem`` (any of the kinds)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = _stem_pattern(stem)
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def interrupted(folder: str | Path, stem: str) -> bool:
    """True when a write of ``stem`` was killed: its staging folder is there and its JSON is not."""
    folder = Path(folder)
    staged = any(p.is_dir() for p in folder.glob(f".{glob_escape(stem)}-*"))
    return staged and not (folder / info_name(stem)).is_file()


def remove_interrupted(folder: str | Path, stem: str) -> list[Path]:
    """Remove what a killed write of ``stem`` left: its staging folders and, without a JSON, its files."""
    folder = Path(folder)
    removed = existing_outputs(folder, stem) if interrupted(folder, stem) else []
    for path in removed:
        path.unlink(missing_ok=True)
    for staging in folder.glob(f".{glob_escape(stem)}-*"):
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging)
    return removed


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def output_files(
    stem: str,
    *,
    labels: np.ndarray,
    probabilities: np.ndarray | None,
    attention: dict[str, np.ndarray],
    rates: dict[str, Sequence[int]],
    receptive_field_min: int,
    network_spacing: Sequence[float],
    kinds: Iterable[str] = KINDS,
) -> list[OutputFile]:
    """The files a prediction of these kinds is saved as (maps are derived as they are written).

    ``network_spacing`` is the voxel size the network computed on: the zoom map converts the
    receptive field from the network's voxels to mm with it, even when the maps were resampled
    back to a scan of another spacing.
    """
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise AutofocusError(f"unknown output kind(s) {sorted(unknown)}; expected {', '.join(KINDS)}")
    files = []
    if "labels" in kinds:
        files.append(OutputFile(labels_name(stem), lambda: labels, is_label=True))
    if "probabilities" in kinds and probabilities is not None:
        files.append(OutputFile(f"{stem}_probabilities.nii.gz", lambda: probabilities))
    for name, weights in attention.items():
        r = tuple(rates[name])
        if "attention" in kinds:  # float16 maps are written as float32, a slab at a time
            files.append(OutputFile(f"{stem}_{name}_attention.nii.gz", lambda w=weights: w))
        if "derived" in kinds:
            files += derived_files(stem, name, weights, r)
    if "derived" in kinds and attention:
        names = list(attention)

        def zoom_mm(*layers) -> np.ndarray:
            voxels = maps.zoom_voxels(dict(zip(names, layers, strict=True)), rates, receptive_field_min)
            return maps.zoom_mm(voxels, network_spacing).astype(np.float32)

        def zoom() -> np.ndarray:
            return by_slabs(zoom_mm, *attention.values(), dtype=np.float32)

        files.append(OutputFile(f"{stem}_zoom_mm.nii.gz", zoom))
    return files


def derived_files(stem: str, name: str, weights: np.ndarray, rates: tuple[int, ...]) -> list[OutputFile]:
    """One autofocus layer's arg-max rate, expected rate and normalised entropy maps."""

    def argmax() -> np.ndarray:
        return by_slabs(lambda a: maps.argmax_rate(a, rates), weights, dtype=np.int16)

    def expected() -> np.ndarray:
        return by_slabs(lambda a: maps.expected_rate(a, rates), weights, dtype=np.float32)

    def entropy() -> np.ndarray:
        return by_slabs(maps.normalized_entropy, weights, dtype=np.float32)

    return [
        OutputFile(f"{stem}_{name}_argmax_rate.nii.gz", argmax, is_label=True),
        OutputFile(f"{stem}_{name}_expected_rate.nii.gz", expected),
        OutputFile(f"{stem}_{name}_entropy.nii.gz", entropy),
    ]


def by_slabs(function, *maps_, dtype) -> np.ndarray:
    """``function`` of (K, D, H, W) maps: computed whole for small maps, and a slab of planes at a
    time into a scratch array for big ones (memory stays bounded whatever the volume's size)."""
    if not any(is_scratch(m) or m.nbytes > BIG_ARRAY_BYTES for m in maps_):
        return function(*maps_)
    out = scratch_array(maps_[0].shape[1:], dtype)
    for planes in slabs(maps_[0].shape[1]):
        out[planes] = function(*(m[:, planes] for m in maps_))
        release(out, *maps_)
    return out


def write_outputs(
    folder: str | Path,
    stem: str,
    files: Sequence[OutputFile],
    geometry,
    info: dict,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``files`` and ``<stem>_prediction.json`` (``info`` plus the list of outputs) into ``folder``.

    Refuses when the stem has files there unless ``overwrite``; then files of the stem that this
    write does not produce (e.g. attention maps of an earlier run) are removed, so the folder never
    mixes two runs.
    """
    from napari_autofocus.io.nifti import save_nifti

    folder = Path(folder)
    remove_interrupted(folder, stem)
    old = existing_outputs(folder, stem)
    if old and not overwrite:
        raise AutofocusError(
            f"{len(old)} file(s) of {stem!r} already exist in {folder} (e.g. {old[0].name}); "
            "choose to overwrite them or another folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=folder))
    try:
        names = []
        for item in files:
            save_nifti(staging / item.filename, item.make(), geometry, is_label=item.is_label)
            names.append(item.filename)
        record = {**info, "outputs": [*names, info_name(stem)]}
        write_text(staging / info_name(stem), json.dumps(record, indent=2, default=str) + "\n")
        (folder / info_name(stem)).unlink(missing_ok=True)  # the old set is incomplete from here on
        for path in old:
            if path.name not in record["outputs"]:
                path.unlink(missing_ok=True)
        for name in record["outputs"]:  # the JSON last: it marks the stem complete
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in record["outputs"]]
