"""Simulated brain tumours on real anatomy: Decathlon / nnU-Net cases made from the MNI152 template.

Each case is the ICBM 2009a T1 template and its tissue maps (:mod:`src_training.brain_anatomy`)
under one random smooth deformation, with one or two tumours in the BraTS 2023 label convention:
1 necrotic core, 2 oedema, 3 enhancing rim (regions: whole tumour 1+2+3, tumour core 1+3,
enhancing tumour 3). Tumour cores range from 3 to 30 mm in radius, drawn in three size classes in
turn (case seed modulo 3), so that a large tumour's necrotic centre is as far from its rim as the
whole of a small tumour is wide: within BASIC's 29^3 receptive field (58 mm at 2 mm voxels) the
middle of a large core can see only necrosis. Tumours sit inside the brain, mostly in white matter,
and push the tissue around them outward (mass effect); the oedema follows the white matter.

Channels: the real T1 (darkened where the tumour is), and three contrasts simulated from the
tissue maps and the tumour compartments, named as simulated in ``dataset.json``, in the NIfTI
description and so in every model card trained on them: T1c (enhancing rim bright), T2 (fluid and
oedema bright) and FLAIR (oedema bright, fluid dark). The same seed gives the same files.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_autofocus.io.nifti import PHANTOM_MARK
from src_training.brain_anatomy import (
    MNI152_NOTICE,
    TEMPLATE_NAME,
    MassEffect,
    grid_for,
    load_template,
    smooth_field,
    warp,
)
from src_training.case_writing import check_layout, save_case, write_cases

DATASET_NAME = "AutofocusBrainPhantom"
CHANNEL_NAMES = ("T1 (MNI152 template)", "T1c (simulated)", "T2 (simulated)", "FLAIR (simulated)")
CLASS_NAMES = {0: "background", 1: "necrotic core", 2: "oedema", 3: "enhancing rim"}
REGIONS = {"whole tumour": [1, 2, 3], "tumour core": [1, 3], "enhancing tumour": [3]}
NOTICE_FILE = "NOTICE-MNI152.txt"
DESCRIPTION = f"{PHANTOM_MARK}: simulated tumour on MNI152"
# Tumour core radius classes (mm); case ``seed`` draws its first tumour from class seed % 3.
SIZE_CLASSES = ((3.0, 8.0), (8.0, 18.0), (18.0, 30.0))
# Intensity of each tumour compartment per channel, relative to white matter (T1, T1c, T2, FLAIR).
LESION_LEVELS = {
    1: np.array([0.35, 0.35, 1.40, 0.45]),  # necrotic core: dark on T1, fluid-bright on T2
    2: np.array([0.75, 0.78, 1.15, 1.35]),  # oedema: bright on T2 and FLAIR
    3: np.array([0.65, 1.60, 0.90, 1.00]),  # enhancing rim: bright on T1c only
}


_PRIORITY = np.array([0, 3, 1, 2])  # label value -> which wins where two tumours overlap


@dataclass(frozen=True)
class BrainPhantomConfig:
    spacing: float = 2.0  # mm, isotropic; 2 mm or finer
    tumours: tuple[int, int] = (1, 2)
    deformation_mm: float = 3.0  # typical size of the random smooth displacement
    mass_effect: float = 0.45  # strength of the push around a large tumour (< 1)
    noise: float = 0.03  # Gaussian noise, fraction of white-matter intensity
    bias: float = 0.08  # smooth multiplicative bias field amplitude
    jitter: float = 0.08  # per-case variation of the tumour intensities

    def __post_init__(self) -> None:
        if not 0.5 <= self.spacing <= 2.0:
            raise ValueError(f"spacing must be 0.5 to 2 mm, got {self.spacing}")


@dataclass(frozen=True)
class Tumour:
    centre_mm: np.ndarray  # in the template's frame (mm from its first voxel)
    core_mm: float
    oedema_mm: float
    axes: np.ndarray  # ellipsoid stretch per axis
    necrotic: float  # fraction of the core radius that is necrotic (0: a solid enhancing tumour)


def _draw_tumours(rng, brain: np.ndarray, wm: np.ndarray, spacing: float, count: int, seed: int) -> list:
    """Tumour sizes (the first from size class ``seed % 3``) and centres inside the brain, in white
    matter, far enough from the brain's edge and from each other."""
    depth_mm = ndimage.distance_transform_edt(brain) * spacing
    tumours: list[Tumour] = []
    for index in range(count):
        low, high = SIZE_CLASSES[(seed + index) % 3]
        core = float(math.exp(rng.uniform(math.log(low), math.log(high))))
        for _ in range(8):  # a smaller tumour where a large one does not fit
            ok = (depth_mm > 0.6 * core + 5) & (wm > 0.45)
            for other in tumours:
                ok &= _distance_mm(brain.shape, other.centre_mm, spacing) > other.oedema_mm + core
            candidates = np.flatnonzero(ok)
            if candidates.size:
                break
            core *= 0.8
        else:
            continue
        centre = np.array(np.unravel_index(rng.choice(candidates), brain.shape), float) * spacing
        tumours.append(
            Tumour(
                centre_mm=centre,
                core_mm=core,
                oedema_mm=core * rng.uniform(1.4, 2.1) + 4.0,
                axes=rng.uniform(0.8, 1.25, size=3),
                necrotic=float(rng.uniform(0.5, 0.7)) if core >= 7.0 else 0.0,
            )
        )
    return tumours


def _distance_mm(shape, centre_mm, spacing) -> np.ndarray:
    axes = [np.arange(n, dtype=np.float32) * spacing - c for n, c in zip(shape, centre_mm, strict=True)]
    return np.sqrt(sum(a**2 for a in np.meshgrid(*axes, indexing="ij", sparse=True)))


def _compartments(rng, tumour: Tumour, tissue: dict, spacing: float) -> tuple[np.ndarray, tuple]:
    """The tumour's labels (1, 2, 3) in a box around it, lobulated by smooth noise."""
    shape = tissue["wm"].shape
    reach = tumour.oedema_mm * 1.5 / spacing
    centre = tumour.centre_mm / spacing
    box = tuple(
        slice(max(0, int(c - reach)), min(n, int(c + reach) + 1)) for c, n in zip(centre, shape, strict=True)
    )
    sub = [
        np.arange(b.start, b.stop, dtype=np.float32) * spacing - c
        for b, c in zip(box, tumour.centre_mm, strict=True)
    ]
    offset = np.meshgrid(*sub, indexing="ij", sparse=True)
    radius = np.sqrt(sum((o / a) ** 2 for o, a in zip(offset, tumour.axes, strict=True)))
    box_shape = tuple(b.stop - b.start for b in box)
    core = radius / (tumour.core_mm * (1 + 0.15 * smooth_field(rng, box_shape, 6.0 / spacing)))
    oedema = radius / (tumour.oedema_mm * (1 + 0.3 * smooth_field(rng, box_shape, 10.0 / spacing)))
    brain = tissue["brain"][box] > 0
    white = (tissue["wm"][box] + 0.4 * tissue["gm"][box]) > 0.35  # oedema spreads along white matter
    labels = np.zeros(box_shape, np.uint8)
    labels[(oedema < 1) & white & brain] = 2
    labels[(core < 1) & brain] = 3
    labels[(core < tumour.necrotic) & brain] = 1
    return labels, box


def _channels(tissue: dict, fractions: dict, rng, config: BrainPhantomConfig) -> np.ndarray:
    """Four channels: tissue contrasts mixed with the tumour compartments' levels, then texture,
    bias field and noise; zero outside the brain (skull-stripped)."""
    wm_level = float(np.median(tissue["t1"][tissue["wm"] > 0.9])) if (tissue["wm"] > 0.9).any() else 1.0
    t1 = tissue["t1"] / wm_level
    csf = np.clip(tissue["brain"] - tissue["gm"] - tissue["wm"], 0, 1)
    base = np.stack(
        [
            t1,
            t1,
            0.45 * tissue["wm"] + 0.70 * tissue["gm"] + 1.30 * csf,
            0.55 * tissue["wm"] + 0.75 * tissue["gm"] + 0.15 * csf,
        ]
    )
    lesion = sum(fractions.values())
    image = base * (1 - lesion)
    for label, fraction in fractions.items():
        levels = LESION_LEVELS[label] * rng.uniform(1 - config.jitter, 1 + config.jitter, size=4)
        image += levels.reshape(4, 1, 1, 1) * fraction
    shape = t1.shape
    bias = 1 + config.bias * smooth_field(rng, shape, 40.0 / config.spacing)
    for c in range(4):
        texture = 1 + 0.03 * smooth_field(rng, shape, 3.0 / config.spacing)
        image[c] = image[c] * texture * bias + config.noise * rng.standard_normal(shape).astype(np.float32)
    return np.clip(image, 0, None) * tissue["brain"]


def make_brain_case(seed: int, config: BrainPhantomConfig = BrainPhantomConfig()):
    """(image (4, X, Y, Z) float32 in the template's voxel order, labels uint8, affine, tumours)."""
    template = load_template()
    rng = np.random.default_rng(seed)
    shape, affine = grid_for(template, config.spacing)
    plain = warp(template, config.spacing, np.random.default_rng(0), deformation_mm=0.0)
    count = int(rng.integers(config.tumours[0], config.tumours[1] + 1))
    tumours = _draw_tumours(rng, plain["t1"] > 0.02, plain["wm"], config.spacing, count, seed)
    masses = tuple(
        MassEffect(t.centre_mm, t.oedema_mm * 1.2, config.mass_effect * min(1.0, t.core_mm / 18.0))
        for t in tumours
    )
    tissue = warp(template, config.spacing, rng, deformation_mm=config.deformation_mm, masses=masses)
    tissue["brain"] = (ndimage.gaussian_filter(tissue["t1"], 0.5) > 0.02).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    for tumour in tumours:
        part, box = _compartments(rng, tumour, tissue, config.spacing)
        region = labels[box]  # where tumours meet: necrosis over enhancing rim over oedema
        replace = _PRIORITY[part] > _PRIORITY[region]
        region[replace] = part[replace]
    labels[tissue["brain"] == 0] = 0
    fractions = {
        label: np.clip(ndimage.gaussian_filter((labels == label).astype(np.float32), 0.6), 0, 1)
        for label in (1, 2, 3)
    }
    image = _channels(tissue, fractions, rng, config)
    return image.astype(np.float32), labels, affine, tumours


def write_brain_dataset(
    out: str | Path,
    cases: int,
    seed: int,
    config: BrainPhantomConfig = BrainPhantomConfig(),
    layout: str = "msd",
    prefix: str = "brain",
    jobs: int = 1,
) -> Path:
    """Write ``cases`` cases (seeds ``seed``, ``seed+1``, ...) as an MSD or nnU-Net raw folder, with
    the template's copyright notice beside them."""
    check_layout(layout)
    out = Path(out)
    entries = write_cases(out, prefix, seed, cases, _write_case, config, layout, out, jobs=jobs)
    (out / NOTICE_FILE).write_text(MNI152_NOTICE)
    meta = {
        "name": DATASET_NAME,
        "description": "Simulated brain tumours on the MNI152 template (napari-autofocus): real T1 anatomy, "
        "simulated T1c, T2 and FLAIR, not images of any patient.",
        "reference": f"napari-autofocus src_training.brain_phantom_cases on {TEMPLATE_NAME}",
        "licence": f"see {NOTICE_FILE} (MNI152 copyright notice); the simulation CC0",
        "simulated": True,
        "tensorImageSize": "4D" if layout == "msd" else "3D",
        "modality": {str(i): n for i, n in enumerate(CHANNEL_NAMES)},
        "channel_names": {str(i): n for i, n in enumerate(CHANNEL_NAMES)},
        "labels": {n: v for v, n in CLASS_NAMES.items()},
        "regions": REGIONS,
        "numTraining": cases,
        "numTest": 0,
        "file_ending": ".nii.gz",
        "training": [entry for entry, _ in entries],
        "test": [],
        "brain_phantom": {
            "seed": seed,
            "config": asdict(config),
            "tumours": {Path(entry["label"]).name.split(".")[0]: tumours for entry, tumours in entries},
        },
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def _write_case(case, case_seed, config, layout, out) -> tuple[dict, list]:
    image, labels, affine, tumours = make_brain_case(case_seed, config)
    stored = np.round(image * 1000).astype(np.int16)
    entry = save_case(out, case, layout, stored, labels, affine, DESCRIPTION)
    described = [
        {"core_radius_mm": round(t.core_mm, 2), "oedema_radius_mm": round(t.oedema_mm, 2),
         "centre_mm": [round(float(v), 1) for v in t.centre_mm], "necrotic_fraction": round(t.necrotic, 3)}
        for t in tumours
    ]  # fmt: skip
    return entry, described
