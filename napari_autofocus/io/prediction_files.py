"""The files a prediction is saved as: one naming scheme and one writer for ``predict`` and Export.

The names follow nnU-Net's convention so that ``evaluate --pred`` scores a predictions folder
without renaming: the label map is ``<stem>.nii.gz``; beside it ``<stem>_probabilities.nii.gz``,
per autofocus layer ``<stem>_<AF>_attention.nii.gz`` (4D, one volume per rate) and the derived
``<stem>_<AF>_argmax_rate``, ``_expected_rate`` and ``_entropy`` maps, ``<stem>_zoom_mm.nii.gz``,
and ``<stem>_prediction.json`` (how the prediction was made). Every volume is written with the
source scan's geometry.

Nothing here deletes or replaces a file it cannot prove this tool wrote. A stem's files are
written into a staging folder with an unguessable name (``.napari-autofocus-staging-<32 hex>``: 16
random, then 16 of the stem's SHA-256) holding a marker that names the stem and the files, then
moved into place with the JSON last: the JSON marks the stem complete, and it carries
``"written_by": "napari-autofocus"`` and the list of its outputs. A killed write leaves its staging
folder behind; the next write of that stem (or ``evaluate --pred``) reads the marker, matches the
stem exactly, and removes only the files the marker says were already moved out. A folder killed
before its marker was in place is removed when its name is this stem's and it holds nothing but the
marker's temporary file. Overwriting replaces only the files the old JSON lists and refuses when a
file of the same name was not written by this tool.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_autofocus.analysis import attention_maths
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


def is_output_name(stem: str, name: str) -> bool:
    """True when ``name`` is one of the file names a prediction of ``stem`` can be saved as."""
    return bool(_stem_pattern(stem).match(name))


def existing_outputs(folder: str | Path, stem: str) -> list[Path]:
    """Files in ``folder`` that an earlier prediction saved under ``stem`` (any of the kinds)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = _stem_pattern(stem)
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


WRITTEN_BY = "napari-autofocus"
STAGING_PREFIX = ".napari-autofocus-staging-"
STAGING_MARKER = "napari-autofocus-staging.json"
_STAGING_NAME = re.compile(rf"^{re.escape(STAGING_PREFIX)}[0-9a-f]{{32}}$")
# the marker's temporary file while it is written (io.atomic's name for it)
_MARKER_IN_PROGRESS = re.compile(rf"^\.{re.escape(STAGING_MARKER)}\.[A-Za-z0-9_]+\.tmp$")


def stem_tag(stem: str) -> str:
    """16 hex digits of the stem's SHA-256: the second half of its staging folders' names, so a
    folder killed before its marker was written is still known to be this stem's."""
    return hashlib.sha256(stem.encode()).hexdigest()[:16]


def new_staging_name(stem: str) -> str:
    return f"{STAGING_PREFIX}{secrets.token_hex(8)}{stem_tag(stem)}"


_MAX_JSON_BYTES = 16 * 2**20  # far above any prediction JSON; a bigger file is not ours


def read_marked_json(path: Path, max_bytes: int = _MAX_JSON_BYTES) -> dict | None:
    """A JSON object this tool wrote (it carries ``written_by``), or None for anything else."""
    path = Path(path)
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > max_bytes:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("written_by") != WRITTEN_BY:
        return None
    return record


def _listed(record: dict | None, stem: str) -> list[str]:
    """The outputs a record names that are files of ``stem`` (never a path or another stem's file)."""
    names = record.get("outputs") if record else None
    if not isinstance(names, list):
        return []
    pattern = _stem_pattern(stem)
    return [n for n in names if isinstance(n, str) and pattern.match(n)]


def own_record(folder: str | Path, stem: str) -> dict | None:
    """The JSON of this tool's complete write of ``stem`` in ``folder``, or None without one."""
    return read_marked_json(Path(folder) / info_name(stem))


def complete_record(folder: str | Path, stem: str) -> dict | None:
    """This tool's JSON for ``stem`` when every file it lists is in ``folder`` (the stem is complete)."""
    record = own_record(folder, stem)
    if record is None or not all((Path(folder) / name).is_file() for name in _listed(record, stem)):
        return None
    return record


def own_outputs(folder: str | Path, stem: str) -> list[str] | None:
    """The files of ``stem`` this tool's complete write lists in ``folder``; None without one."""
    record = read_marked_json(Path(folder) / info_name(stem))
    return _listed(record, stem) if record else None


def staging_folders(folder: str | Path, stem: str) -> list[tuple[Path, dict]]:
    """Staging folders of ``stem`` left in ``folder`` (exact name pattern, marker, stem matched exactly)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if not _STAGING_NAME.match(path.name) or path.is_symlink() or not path.is_dir():
            continue
        marker = read_marked_json(path / STAGING_MARKER)
        if marker and marker.get("stem") == stem:
            found.append((path, marker))
    return found


def unmarked_staging_folders(folder: str | Path, stem: str) -> list[Path]:
    """Staging folders of ``stem`` killed before their marker was in place: named for this stem
    (:func:`stem_tag`) and holding nothing, or only the marker's temporary file."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        if not _STAGING_NAME.match(path.name) or not path.name.endswith(stem_tag(stem)):
            continue
        if path.is_symlink() or not path.is_dir() or (path / STAGING_MARKER).exists():
            continue
        if all(_MARKER_IN_PROGRESS.match(p.name) and p.is_file() for p in path.iterdir()):
            found.append(path)
    return found


def interrupted(folder: str | Path, stem: str) -> bool:
    """True when a write of ``stem`` was killed: its staging folder is there and its JSON is not."""
    return bool(staging_folders(folder, stem)) and own_outputs(folder, stem) is None


def leftovers(folder: str | Path, stem: str) -> list[Path]:
    """Files a killed write of ``stem`` had already moved into ``folder``: absent from its staging
    folder, listed by its marker, and no complete JSON of this tool beside them."""
    folder = Path(folder)
    if own_outputs(folder, stem) is not None:
        return []
    found = set()
    for staging, marker in staging_folders(folder, stem):
        if marker.get("moving") is True:
            found |= {n for n in _listed(marker, stem) if not (staging / n).exists()}
    return sorted(folder / n for n in found if (folder / n).is_file())


def remove_interrupted(folder: str | Path, stem: str) -> list[Path]:
    """Remove what a killed write of ``stem`` left: the files it had moved, then its staging folders."""
    removed = leftovers(folder, stem)
    for path in removed:
        path.unlink(missing_ok=True)
    for staging, _ in staging_folders(folder, stem):
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    for staging in unmarked_staging_folders(folder, stem):  # killed between mkdir and the marker
        for path in staging.iterdir():
            path.unlink(missing_ok=True)
        staging.rmdir()
        removed.append(staging)
    return removed


def foreign_outputs(folder: str | Path, stem: str, names: Iterable[str] | None = None) -> list[Path]:
    """Files in ``folder`` named as outputs of ``stem`` (``names``, or any output name) that this
    tool cannot prove it wrote: not listed by its JSON there, and not a killed write's leftovers."""
    folder = Path(folder)
    ours = set(own_outputs(folder, stem) or []) | {p.name for p in leftovers(folder, stem)}
    candidates = (folder / n for n in names) if names is not None else existing_outputs(folder, stem)
    return [p for p in candidates if (p.exists() or p.is_symlink()) and p.name not in ours]


def refuse_foreign(folder: str | Path, stem: str, names: Iterable[str] | None = None) -> None:
    """Raise when :func:`foreign_outputs` finds a file this tool would replace without having written it."""
    foreign = foreign_outputs(folder, stem, names)
    if foreign:
        raise AutofocusError(
            f"{foreign[0]} is not an output of napari-autofocus (no {info_name(stem)} written by it lists "
            f"the file), so it is not replaced; {len(foreign)} such file(s) of {stem!r}: move them away or "
            "choose another folder"
        )


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
            voxels = attention_maths.zoom_voxels(
                dict(zip(names, layers, strict=True)), rates, receptive_field_min
            )
            return attention_maths.zoom_mm(voxels, network_spacing).astype(np.float32)

        def zoom() -> np.ndarray:
            return by_slabs(zoom_mm, *attention.values(), dtype=np.float32)

        files.append(OutputFile(f"{stem}_zoom_mm.nii.gz", zoom))
    return files


def write_prediction(
    folder: str | Path,
    stem: str,
    prediction,
    geometry,
    info: dict,
    *,
    receptive_field_min: int,
    network_spacing: Sequence[float],
    kinds: Iterable[str] = KINDS,
    overwrite: bool = False,
) -> list[Path]:
    """Save a prediction (labels, probabilities, attention and rates, on the scan's grid) as the
    files of these kinds plus ``<stem>_prediction.json``: what ``predict`` and Export both write."""
    files = output_files(
        stem,
        labels=prediction.labels,
        probabilities=prediction.probabilities,
        attention=prediction.attention,
        rates=prediction.rates,
        receptive_field_min=receptive_field_min,
        network_spacing=network_spacing,
        kinds=kinds,
    )
    return write_outputs(folder, stem, files, geometry, info, overwrite=overwrite)


def derived_files(stem: str, name: str, weights: np.ndarray, rates: tuple[int, ...]) -> list[OutputFile]:
    """One autofocus layer's arg-max rate, expected rate and normalised entropy maps."""

    def argmax() -> np.ndarray:
        return by_slabs(lambda a: attention_maths.argmax_rate(a, rates), weights, dtype=np.int16)

    def expected() -> np.ndarray:
        return by_slabs(lambda a: attention_maths.expected_rate(a, rates), weights, dtype=np.float32)

    def entropy() -> np.ndarray:
        return by_slabs(attention_maths.normalized_entropy, weights, dtype=np.float32)

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
    names = [item.filename for item in files] + [info_name(stem)]
    refuse_foreign(folder, stem, names)
    replaced = own_outputs(folder, stem) or []
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / new_staging_name(stem)
    staging.mkdir()
    marker = {"written_by": WRITTEN_BY, "stem": stem, "outputs": names, "moving": False}
    try:
        write_text(staging / STAGING_MARKER, json.dumps(marker))
        for item in files:
            save_nifti(staging / item.filename, item.make(), geometry, is_label=item.is_label)
        record = {**info, "written_by": WRITTEN_BY, "outputs": names}
        write_text(staging / info_name(stem), json.dumps(record, indent=2, default=str) + "\n")
        write_text(staging / STAGING_MARKER, json.dumps({**marker, "moving": True}))
        if replaced:
            (folder / info_name(stem)).unlink(missing_ok=True)  # the old set is incomplete from here on
        for name in replaced:
            if name not in names:
                (folder / name).unlink(missing_ok=True)
        for name in names:  # the JSON last: it marks the stem complete
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [folder / name for name in record["outputs"]]
