"""Generated cases written as a dataset folder: one loop for every generator (phantoms, brains)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

LAYOUTS = ("msd", "nnunet")


def write_cases(
    out: str | Path, prefix: str, seed: int, cases: int, write_case: Callable, *args, jobs: int = 1
):
    """``write_case(name, seed, *args)`` for cases ``<prefix>_<seed+i>`` into ``out``'s imagesTr and
    labelsTr; their results in case order. ``jobs`` > 1 writes in that many processes: each case
    depends only on its own seed, so the files are the same whatever ``jobs`` is."""
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    work = [(f"{prefix}_{seed + index:05d}", seed + index, *args) for index in range(cases)]
    if jobs > 1 and cases > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, cases)) as pool:
            return list(pool.map(write_case, *zip(*work, strict=True)))
    return [write_case(*item) for item in work]


def check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'msd' or 'nnunet', not {layout!r}")


def save_case(out: Path, case: str, layout: str, image, labels, affine, description: str) -> dict:
    """One case's files: a 4D image (msd) or one file per channel (nnunet), and its labels; the
    ``dataset.json`` entry that lists them. ``image`` is (C, X, Y, Z) in the file's voxel order."""
    import numpy as np

    if layout == "msd":
        save_volume(np.moveaxis(image, 0, -1), affine, out / "imagesTr" / f"{case}.nii.gz", description)
        image_ref = f"./imagesTr/{case}.nii.gz"
    else:
        for c in range(image.shape[0]):
            save_volume(image[c], affine, out / "imagesTr" / f"{case}_{c:04d}.nii.gz", description)
        image_ref = f"./imagesTr/{case}"
    save_volume(labels, affine, out / "labelsTr" / f"{case}.nii.gz", description)
    return {"image": image_ref, "label": f"./labelsTr/{case}.nii.gz"}


def save_volume(array, affine, path: Path, description: str) -> None:
    """A NIfTI file in mm with both sform and qform set; ``description`` marks generated data, which
    lets the predictor tell it from real scans."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = description.encode()
    nib.save(img, str(path))
