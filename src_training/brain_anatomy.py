"""Real anatomy for simulated cases: the MNI152 ICBM 2009a template and its tissue maps.

nilearn ships the 1 mm T1 template and the grey- and white-matter probability maps of the ICBM
2009a nonlinear symmetric atlas as package data, so they are read from its installed files (no
download, no import of nilearn itself). :func:`warp` resamples them to a case's grid through one
smooth random deformation per case, with the mass effect of its tumours folded in, in a single
interpolation.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from napari_autofocus.errors import DatasetError

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
TEMPLATE_NAME = "MNI152 ICBM 2009a nonlinear symmetric (1 mm)"
# The notice the template's authors ask to be reproduced in all copies.
MNI152_NOTICE = """\
The T1 channel and the tissue maps these cases are made from are the ICBM 2009a Nonlinear Symmetric
template (MNI152), deformed and resampled:

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological
Institute, McGill University. Permission to use, copy, modify, and distribute this software and its
documentation for any purpose and without fee is hereby granted, provided that the above copyright
notice appear in all copies. The authors and McGill University make no representations about the
suitability of this software for any purpose. It is provided "as is" without express or implied
warranty. The authors are not responsible for any data loss, equipment damage, property loss, or
injury to subjects or patients resulting from the use or misuse of this software package.

References: VS Fonov, AC Evans, RC McKinstry, CR Almli and DL Collins, Unbiased nonlinear average
age-appropriate brain templates from birth to adulthood, NeuroImage 47 (2009) S102; VS Fonov,
AC Evans, K Botteron, CR Almli, RC McKinstry, DL Collins and BDCG, Unbiased average age-appropriate
atlases for pediatric studies, NeuroImage 54 (2011) 313-327.

The tumours, the deformations and the T1c, T2 and FLAIR channels are simulated by napari-autofocus
(src_training.brain_phantom_cases); they are not images of any patient.
"""


def template_folder() -> Path:
    """nilearn's package-data folder, found without importing nilearn (it is slow to import)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(
            "the MNI152 template comes from nilearn's package data: install it with "
            "pip install 'napari-autofocus[brain]' (or pip install nilearn)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"{folder}: nilearn's package data lacks {missing}; reinstall nilearn")
    return folder


@dataclass(frozen=True)
class Template:
    """The 1 mm template in its own voxel order (RAS), scaled to 0..1, and its affine."""

    t1: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    affine: np.ndarray

    @property
    def brain(self) -> np.ndarray:
        """Inside the skull-stripped template (its T1 is zero outside)."""
        return self.t1 > 0.02


@functools.lru_cache(maxsize=1)
def load_template() -> Template:
    folder = template_folder()
    arrays = {}
    for key, name in TEMPLATE_FILES.items():
        img = nib.load(str(folder / name))
        data = np.asarray(img.dataobj, dtype=np.float32)
        arrays[key] = data / max(float(data.max()), 1e-6)
        affine = np.asarray(img.affine, dtype=float)
    return Template(affine=affine, **arrays)


def grid_for(template: Template, spacing: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """The shape and affine of the template's field of view at ``spacing`` mm (same corner)."""
    shape = tuple(int(round(n / spacing)) for n in template.t1.shape)
    affine = template.affine @ np.diag([spacing, spacing, spacing, 1.0])
    return shape, affine


def smooth_field(rng: np.random.Generator, shape, scale_voxels: float) -> np.ndarray:
    """Zero-mean, unit-peak-std random field with features about ``scale_voxels`` across, made on a
    coarse grid and interpolated up (cheap at any resolution)."""
    step = max(1, int(scale_voxels // 2))
    coarse = rng.standard_normal(tuple(max(2, -(-n // step) + 1) for n in shape))
    coarse = ndimage.gaussian_filter(coarse, sigma=max(scale_voxels / step / 2, 0.5), mode="nearest")
    fine = ndimage.zoom(coarse, [n / c for n, c in zip(shape, coarse.shape, strict=True)], order=3)
    fine = fine[tuple(slice(0, n) for n in shape)]
    return ((fine - fine.mean()) / (fine.std() + 1e-8)).astype(np.float32)


@dataclass(frozen=True)
class MassEffect:
    """Tissue pushed outward around a tumour centre (mm, template voxel frame)."""

    centre: np.ndarray
    radius_mm: float
    strength: float  # < 1: the mapping stays one-to-one


def warp(
    template: Template,
    spacing: float,
    rng: np.random.Generator,
    *,
    deformation_mm: float,
    masses: tuple[MassEffect, ...] = (),
) -> dict[str, np.ndarray]:
    """T1, GM and WM on the case's grid through a random smooth deformation and the mass effects.

    Coordinates are in the 1 mm template's voxels (= mm). For every target voxel the source point
    is: the target position, minus a smooth random displacement of about ``deformation_mm``, and
    pulled toward each tumour centre (``s(d) = d (1 - a exp(-(d/R)^2))``, monotonic for a < 1), so
    the tissue the tumour displaces is pushed outward.
    """
    shape, _ = grid_for(template, spacing)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) * spacing for n in shape], indexing="ij"))
    pulled = grid.copy()
    for mass in masses:
        offset = grid - mass.centre.reshape(3, 1, 1, 1).astype(np.float32)
        distance = np.sqrt((offset**2).sum(axis=0))
        pulled -= offset * (mass.strength * np.exp(-((distance / mass.radius_mm) ** 2)))
    grid = pulled
    scale = 24.0 / spacing  # features about 24 mm across
    for axis in range(3):
        grid[axis] += deformation_mm * smooth_field(rng, shape, scale)
    out = {}
    for key in ("t1", "gm", "wm"):
        out[key] = ndimage.map_coordinates(getattr(template, key), grid, order=1, mode="constant", cval=0.0)
    return out
