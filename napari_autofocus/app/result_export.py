"""Export a result as NIfTI files in the source geometry plus a JSON of parameters and versions.

The files are those ``predict`` writes (:mod:`napari_autofocus.io.prediction_files`), named after
the model, so an exported label map can be scored by ``evaluate --pred`` like a predicted one.
Existing files are never replaced unless the caller says so (the widget asks first). No Qt, no torch.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import numpy as np

from napari_autofocus.io.nifti import geometry_from_layer
from napari_autofocus.io.prediction_files import KINDS, existing_outputs, write_prediction

__all__ = ["KINDS", "existing_files", "export_result"]


def existing_files(folder: str | Path, result, kinds: Iterable[str] = KINDS) -> list[Path]:
    """Files of this result's name in ``folder`` that an export would replace or remove."""
    return existing_outputs(folder, result.name)


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
    """Write the chosen outputs and ``<model>_prediction.json``; returns the written paths."""
    geometry = result.geometry or geometry_from_layer(result.scale, result.translate, result.labels.shape)
    info = {
        **result.provenance(),
        "rates": {k: list(v) for k, v in result.rates.items()},
        "receptive_field_min": result.receptive_field_min,
        "spacing_mm": list(result.scale),
        "affine": np.asarray(geometry.source_affine).tolist(),
        "versions": versions(),
    }
    return write_prediction(
        folder,
        result.name,
        result.prediction,
        geometry,
        info,
        receptive_field_min=result.receptive_field_min,
        network_spacing=result.network_spacing,
        kinds=kinds,
        overwrite=overwrite,
    )
