"""Export a result as NIfTI files in the source geometry plus a JSON of parameters and versions.

Every volume goes through :func:`napari_autofocus.nifti.save_nifti` with the input's geometry, so
the files overlay the original scan in any viewer. Existing files are never replaced unless the
caller says so (the widget asks first). No Qt, no torch.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from napari_autofocus import attention as maps
from napari_autofocus.attention_views import zoom_mm_map
from napari_autofocus.errors import AutofocusError
from napari_autofocus.nifti import geometry_from_layer, save_nifti

KINDS = ("labels", "probabilities", "attention", "derived")


@dataclass
class ExportItem:
    filename: str
    array: np.ndarray
    is_label: bool = False


def items_for(result, kinds: Iterable[str]) -> list[ExportItem]:
    """The files an export of these kinds would write (arrays are computed lazily enough: cheap maps)."""
    kinds = set(kinds)
    unknown = kinds - set(KINDS)
    if unknown:
        raise AutofocusError(f"unknown export kind(s) {sorted(unknown)}; expected {', '.join(KINDS)}")
    stem = result.name
    items = []
    if "labels" in kinds:
        items.append(ExportItem(f"{stem}_labels.nii.gz", result.labels, is_label=True))
    if "probabilities" in kinds and result.probabilities is not None:
        items.append(ExportItem(f"{stem}_probabilities.nii.gz", result.probabilities))
    for name, a in result.attention.items():
        if "attention" in kinds:
            items.append(ExportItem(f"{stem}_{name}_attention.nii.gz", a.astype(np.float32)))
        if "derived" in kinds:
            rates = result.rates[name]
            items.append(ExportItem(f"{stem}_{name}_argmax_rate.nii.gz", maps.argmax_rate(a, rates), True))
            items.append(ExportItem(f"{stem}_{name}_expected_rate.nii.gz", maps.expected_rate(a, rates)))
            items.append(ExportItem(f"{stem}_{name}_entropy.nii.gz", maps.normalized_entropy(a)))
    if "derived" in kinds and result.attention:
        items.append(ExportItem(f"{stem}_zoom_mm.nii.gz", zoom_mm_map(result)))
    return items


def parameters_name(result) -> str:
    return f"{result.name}_parameters.json"


def existing_files(folder: str | Path, result, kinds: Iterable[str]) -> list[Path]:
    """Files this export would overwrite."""
    folder = Path(folder)
    names = [item.filename for item in items_for(result, kinds)] + [parameters_name(result)]
    return [folder / n for n in names if (folder / n).exists()]


def versions() -> dict[str, str]:
    """Versions of the packages that shaped the output."""
    out = {"python": platform.python_version()}
    for package in ("napari-autofocus", "napari", "numpy", "nibabel", "torch"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def export_result(result, folder: str | Path, kinds: Iterable[str], overwrite: bool = False) -> list[Path]:
    """Write the chosen outputs and ``<model>_parameters.json``; returns the written paths."""
    kinds = list(kinds)
    folder = Path(folder)
    clash = existing_files(folder, result, kinds)
    if clash and not overwrite:
        raise AutofocusError(
            f"{len(clash)} file(s) already exist in {folder} (e.g. {clash[0].name}); confirm to overwrite"
        )
    geometry = result.geometry or geometry_from_layer(result.scale, result.translate, result.labels.shape)
    written = [
        Path(save_nifti(folder / item.filename, item.array, geometry, is_label=item.is_label))
        for item in items_for(result, kinds)
    ]
    params = {
        **result.provenance(),
        "exported": [p.name for p in written],
        "rates": {k: list(v) for k, v in result.rates.items()},
        "receptive_field_min": result.receptive_field_min,
        "spacing_mm": list(result.scale),
        "affine": np.asarray(geometry.source_affine).tolist(),
        "versions": versions(),
    }
    path = folder / parameters_name(result)
    path.write_text(json.dumps(params, indent=1, default=str))
    return [*written, path]
