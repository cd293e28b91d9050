"""napari writers: labels and images to NIfTI, back in the geometry of the scan they came from."""

from __future__ import annotations

import numpy as np

from napari_autofocus.io.nifti import NiftiGeometry, geometry_from_layer, save_nifti


def layer_geometry(data: np.ndarray, meta: dict) -> NiftiGeometry:
    """The source geometry stored by our reader, or one built from the layer's scale/translate."""
    geometry = (meta.get("metadata") or {}).get("nifti")
    if isinstance(geometry, NiftiGeometry) and geometry.display_shape == tuple(data.shape[-3:]):
        return geometry
    ndim = data.ndim
    scale = meta.get("scale", (1.0,) * ndim)
    translate = meta.get("translate", (0.0,) * ndim)
    return geometry_from_layer(scale, translate, data.shape[-3:])


def write_labels(path: str, data, meta: dict) -> list[str]:
    data = np.asarray(data)
    _check_3d(data, "labels")
    return [save_nifti(path, data, layer_geometry(data, meta), is_label=True)]


def write_image(path: str, data, meta: dict) -> list[str]:
    data = np.asarray(data)
    _check_3d(data, "image")
    return [save_nifti(path, data, layer_geometry(data, meta))]


def _check_3d(data: np.ndarray, kind: str) -> None:
    if data.ndim != 3:
        from napari_autofocus.errors import NiftiError

        raise NiftiError(f"only 3D {kind} layers can be written as NIfTI; this one has shape {data.shape}")
