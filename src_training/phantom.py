"""Deterministic multi-channel 3D phantoms whose labels are decided by structure size, not intensity.

Every lesion-like structure has the same local appearance in every channel (same contrast,
texture and lobulated edges); what makes a voxel "small lesion" (label 1) or "large lesion"
(label 2) is the size of the whole structure it belongs to. Structures are lobulated and
elongated at random, so a boundary seen through a small window says little about the size of
what lies behind it. Around them: a brain-like region of interest (background 0 outside, as in
skull-stripped MRI), smooth tissue texture, a smooth multiplicative bias field, Gaussian noise
and partial-volume edges.

The cases are written as a Medical Segmentation Decathlon folder (4D ``imagesTr/<case>.nii.gz``
+ ``labelsTr`` + ``dataset.json``) or an nnU-Net v2 raw folder (``<case>_0000.nii.gz`` per channel),
so training, evaluation and napari read them through their normal paths.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

CHANNEL_NAMES = ("T1-like", "T2-like")
CLASS_NAMES = {0: "background", 1: "small lesion", 2: "large lesion"}
# Mean intensity of tissue and of every lesion, per channel (arbitrary MR-like units).
TISSUE_MEAN = np.array([1000.0, 700.0])
LESION_MEAN = np.array([650.0, 1150.0])


@dataclass(frozen=True)
class PhantomConfig:
    shape: tuple[int, int, int] = (96, 96, 96)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    small_radius: tuple[float, float] = (3.0, 8.0)  # equivalent-sphere radius in voxels
    large_radius: tuple[float, float] = (13.0, 22.0)
    n_small: tuple[int, int] = (4, 8)
    n_large: tuple[int, int] = (2, 3)
    noise: float = 0.05  # Gaussian noise, as a fraction of tissue intensity
    bias: float = 0.15  # amplitude of the smooth multiplicative bias field
    texture: float = 0.06  # amplitude of smooth tissue texture
    edge_width: float = 0.8  # partial-volume edge width in voxels


def smooth_noise(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale`` voxels across."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=scale, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _soft_blob(rng, shape, centre, radius, edge_width) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Partial-volume membership (0..1) of a lobulated, randomly elongated blob, on its bounding box."""
    axes = radius * np.exp(rng.uniform(-0.35, 0.35, size=3))
    axes *= radius / np.cbrt(np.prod(axes))  # keep the equivalent-sphere radius
    extent = int(np.ceil(axes.max() * 1.45)) + 2
    box = tuple(
        slice(max(0, int(c) - extent), min(s, int(c) + extent + 1))
        for c, s in zip(centre, shape, strict=True)
    )
    grids = np.meshgrid(
        *[np.arange(b.start, b.stop) - c for b, c in zip(box, centre, strict=True)], indexing="ij"
    )
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    local = np.tensordot(rotation, np.stack(grids), axes=1)
    rho = np.sqrt(sum((local[i] / axes[i]) ** 2 for i in range(3)))
    # Lobulation: bumps a few voxels across whatever the blob size, so edges look alike at every size.
    bumps = smooth_noise(rng, rho.shape, scale=1.6)
    hard = (rho - 1.0) * radius + min(1.6, 0.3 * radius) * bumps < 0
    components, n = ndimage.label(hard)
    if n > 1:  # keep one connected structure: its label must describe all of it
        hard = components == 1 + np.argmax(ndimage.sum_labels(hard, components, index=range(1, n + 1)))
    # Partial-volume membership from the signed distance to the final mask, so label and look agree.
    signed = ndimage.distance_transform_edt(~hard) - ndimage.distance_transform_edt(hard)
    signed -= 0.5 * np.sign(signed)  # voxel centres on either side of the edge sit half a voxel from it
    return 1.0 / (1.0 + np.exp(signed / max(edge_width, 1e-3))), box


def _roi(rng, shape) -> np.ndarray:
    centre = (np.array(shape) - 1) / 2
    grids = np.meshgrid(*[np.arange(s) - c for s, c in zip(shape, centre, strict=True)], indexing="ij")
    semi = np.array(shape) * np.array([0.46, 0.44, 0.47])
    rho = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, semi, strict=True)))
    return rho + 0.04 * smooth_noise(rng, shape, scale=6.0) < 1.0


def make_case(seed: int, config: PhantomConfig = PhantomConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One case: image (C, X, Y, Z) float32 and labels (X, Y, Z) uint8, both in voxel order."""
    rng = np.random.default_rng(seed)
    shape = tuple(config.shape)
    roi = _roi(rng, shape)
    inner = ndimage.distance_transform_edt(roi)
    membership = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    occupied = np.zeros(shape, dtype=bool)

    plan = [(2, config.large_radius)] * int(rng.integers(config.n_large[0], config.n_large[1] + 1))
    plan += [(1, config.small_radius)] * int(rng.integers(config.n_small[0], config.n_small[1] + 1))
    for label, (r_lo, r_hi) in plan:
        for _ in range(60):  # rejection sampling: inside the ROI, not touching another structure
            radius = rng.uniform(r_lo, r_hi)
            candidates = np.argwhere(inner > radius * 0.9 + 2)
            if len(candidates) == 0:
                break
            centre = candidates[rng.integers(len(candidates))]
            soft, box = _soft_blob(rng, shape, centre, radius, config.edge_width)
            hard = soft > 0.5
            halo = ndimage.binary_dilation(hard, iterations=3)
            if (occupied[box] & halo).any() or (hard & ~roi[box]).any():
                continue
            membership[box] = np.maximum(membership[box], soft)
            labels[box][hard] = label
            occupied[box] |= hard
            break

    channels = []
    for c in range(len(CHANNEL_NAMES)):
        tissue = TISSUE_MEAN[c] * (1 + config.texture * smooth_noise(rng, shape, scale=3.0))
        lesion = LESION_MEAN[c] * (1 + config.texture * smooth_noise(rng, shape, scale=3.0))
        image = tissue * (1 - membership) + lesion * membership
        image *= 1 + config.bias * smooth_noise(rng, shape, scale=20.0)
        image += config.noise * TISSUE_MEAN[c] * rng.standard_normal(shape)
        image = ndimage.gaussian_filter(image, 0.5)
        channels.append(np.where(roi, np.clip(image, 1.0, None), 0.0))
    labels[~roi] = 0
    return np.stack(channels).astype(np.float32), labels


def affine_for(config: PhantomConfig) -> np.ndarray:
    """RAS affine centred on the volume, with the configured voxel spacing."""
    affine = np.diag([*config.spacing, 1.0])
    affine[:3, 3] = -(np.array(config.shape) - 1) / 2 * np.array(config.spacing)
    return affine


def write_dataset(
    out: str | Path,
    cases: int,
    seed: int,
    config: PhantomConfig = PhantomConfig(),
    layout: str = "msd",
    prefix: str = "phantom",
) -> Path:
    """Write ``cases`` phantoms (seeds ``seed``, ``seed+1``, ...) as an MSD or nnU-Net raw folder."""
    if layout not in ("msd", "nnunet"):
        raise ValueError(f"layout must be 'msd' or 'nnunet', not {layout!r}")
    out = Path(out)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    affine = affine_for(config)
    training = []
    for index in range(cases):
        case = f"{prefix}_{seed + index:05d}"
        image, labels = make_case(seed + index, config)
        stored = np.round(image).astype(np.int16)
        if layout == "msd":
            _save(np.moveaxis(stored, 0, -1), affine, out / "imagesTr" / f"{case}.nii.gz")
            image_ref = f"./imagesTr/{case}.nii.gz"
        else:
            for c in range(stored.shape[0]):
                _save(stored[c], affine, out / "imagesTr" / f"{case}_{c:04d}.nii.gz")
            image_ref = f"./imagesTr/{case}"
        _save(labels, affine, out / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": image_ref, "label": f"./labelsTr/{case}.nii.gz"})
    meta = {
        "name": "AutofocusPhantom",
        "description": "Synthetic phantoms: label decided by structure size (napari-autofocus).",
        "reference": "napari-autofocus src_training.phantom",
        "licence": "CC0",
        "tensorImageSize": "4D" if layout == "msd" else "3D",
        "modality": {str(i): n for i, n in enumerate(CHANNEL_NAMES)},
        "channel_names": {str(i): n for i, n in enumerate(CHANNEL_NAMES)},
        "labels": {n: v for v, n in CLASS_NAMES.items()},
        "numTraining": cases,
        "numTest": 0,
        "file_ending": ".nii.gz",
        "training": training,
        "test": [],
        "phantom": {"seed": seed, "config": asdict(config)},
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
