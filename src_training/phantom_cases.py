"""Deterministic multi-channel 3D phantoms whose labels are decided by structure size, not intensity.

Every lesion-like structure has the same local appearance in every channel (same contrast,
texture and lobulated edges); what makes a voxel "small lesion" (label 1) or "large lesion"
(label 2) is the size of the whole structure it belongs to. In the default "clusters" style
every structure is a branching chain of touching lobes of one size range: a small lesion has
1-3 lobes (typically 7-22 voxels across), a large one 12-22 (typically 31-55 across). The tip
of a large lesion therefore looks exactly like a whole small lesion, and what tells them apart
(more lobes further along) lies beyond BASIC's 29^3 receptive field. Two other styles exist for
the design study in the README: "masses" (a solid core with budding lobes) and "blobs" (one
lobulated ellipsoid per lesion; its boundary curvature gives its size away inside a 29^3
window, so BASIC solves it).

The "nodules" style asks a different question, modelled on a cyst with a mural nodule next to a
simple cyst: a large lesion (label 2) is a big mass, 32-42 voxels across, with a small darker
nodule just inside its wall; look-alike masses of the same size and look but without a nodule are
background; small lesions (label 1) are single blobs that their own curvature identifies. Only the
nodule tells a lesion from a look-alike, and for about a fifth of a lesion's voxels no part of it
lies inside the 29^3 window centred on them, BASIC's view (about 40% lie more than 14 voxels from it
in straight-line distance); a small lesion, by contrast, is decided by what lies within a few voxels.

Around the lesions: a brain-like region of interest (background 0 outside, as in skull-stripped
MRI), smooth tissue texture, a smooth multiplicative bias field, Gaussian noise and partial-volume
edges; ``spacing`` makes the voxels anisotropic if wanted.

The cases are written as a Medical Segmentation Decathlon folder (4D ``imagesTr/<case>.nii.gz``
+ ``labelsTr`` + ``dataset.json``) or an nnU-Net v2 raw folder (``<case>_0000.nii.gz`` per channel),
so training, evaluation and napari read them through their normal paths.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_autofocus.io.nifti import PHANTOM_MARK
from src_training.case_writing import check_layout, save_case, write_cases
from src_training.phantom_styles import STYLES, default_size, smallest_size

CHANNEL_NAMES = ("T1-like", "T2-like")
CLASS_NAMES = {0: "background", 1: "small lesion", 2: "large lesion"}
# Mean intensity of tissue and of every lesion, per channel (arbitrary MR-like units).
TISSUE_MEAN = np.array([1000.0, 700.0])
LESION_MEAN = np.array([650.0, 1150.0])
# "nodules" style: the small mural nodule on the wall of every large lesion (darker in both channels).
NODULE_MEAN = np.array([350.0, 850.0])


@dataclass(frozen=True)
class PhantomConfig:
    shape: tuple[int, int, int] | None = None  # default: default_size(style) per side
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # "clusters": every structure is a chain/cluster of lobes of one size range; a small lesion has
    # a few lobes, a large one many, so the tip of a large structure looks like a whole small one.
    # "blobs": one lobulated ellipsoid per structure, sized by small_radius/large_radius (easier:
    # a large blob's boundary curvature gives its size away inside BASIC's 29^3 view).
    style: str = "clusters"
    lobe_radius: tuple[float, float] = (3.0, 6.5)  # clusters: radius of each lobe in voxels
    small_lobes: tuple[int, int] = (1, 3)  # clusters: lobes per small lesion
    large_lobes: tuple[int, int] = (12, 22)  # clusters: lobes per large lesion
    core_radius: tuple[float, float] = (9.0, 14.0)  # masses: solid core of a large lesion
    mass_lobes: tuple[int, int] = (6, 14)  # masses: lobes budding off the core in chains
    small_radius: tuple[float, float] = (3.0, 8.0)  # blobs: equivalent-sphere radius in voxels
    large_radius: tuple[float, float] = (13.0, 22.0)
    n_small: tuple[int, int] = (4, 8)
    n_large: tuple[int, int] = (2, 3)
    # "nodules": n_large masses (16-21 voxels in radius; two, a third when it fits) of which one or two,
    # drawn at random, are lesions with a small nodule just inside the wall; the others are look-alikes
    # (same size, same look, no nodule), labelled background. Only the nodule tells them apart, and
    # about a fifth of a lesion's voxels do not have it in their 29^3 window (BASIC's view).
    mass_radius: tuple[float, float] = (16.0, 21.0)
    nodule_radius: tuple[float, float] = (2.5, 4.0)
    noise: float = 0.05  # Gaussian noise, as a fraction of tissue intensity
    bias: float = 0.15  # amplitude of the smooth multiplicative bias field
    texture: float = 0.06  # amplitude of smooth tissue texture
    edge_width: float = 0.8  # partial-volume edge width in voxels

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"phantom style must be one of {STYLES}, not {self.style!r}")
        if self.shape is None:
            object.__setattr__(self, "shape", (default_size(self.style),) * 3)
        if self.style == "nodules" and min(self.shape) < smallest_size("nodules"):
            raise ValueError(
                f"the nodules style needs at least {smallest_size('nodules')} voxels per side for two "
                f"masses to fit, got {list(self.shape)}"
            )


def smooth_noise(rng: np.random.Generator, shape, scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale`` voxels across."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=scale, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def _soft_blob(rng, shape, centre, radius, edge_width, stretch=0.35) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Partial-volume membership (0..1) of a lobulated, randomly elongated blob, on its bounding box."""
    axes = radius * np.exp(rng.uniform(-stretch, stretch, size=3))
    axes *= radius / np.cbrt(np.prod(axes))  # keep the equivalent-sphere radius
    box, grids = _box(shape, centre, int(np.ceil(axes.max() * 1.45)) + 2)
    rotation, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    local = np.tensordot(rotation, np.stack(grids), axes=1)
    rho = np.sqrt(sum((local[i] / axes[i]) ** 2 for i in range(3)))
    # Lobulation: bumps a few voxels across whatever the blob size, so edges look alike at every size.
    bumps = smooth_noise(rng, rho.shape, scale=1.6)
    hard = (rho - 1.0) * radius + min(1.6, 0.3 * radius) * bumps < 0
    return _partial_volume(hard, edge_width), box


def grow_lobes(rng, n_lobes: int, lobe_radius: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Centres (relative to the first) and radii of ``n_lobes`` touching lobes grown as a branching chain.

    Each new lobe buds off a recent lobe (or, less often, any lobe), overlapping it, and is
    rejected when it would swallow an existing one: the result is a branching, grape-like
    structure whose every boundary patch has the curvature of a single lobe.
    """
    radii = rng.uniform(*lobe_radius, size=n_lobes)

    def recent_or_any(count: int) -> int:
        if rng.random() < 0.75:
            return count - 1 - int(rng.integers(min(2, count)))
        return int(rng.integers(count))

    return _bud_lobes(rng, radii, recent_or_any, step=(0.65, 0.9))


def grow_mass(
    rng, core_radius: float, n_lobes: int, lobe_radius: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """A solid core of ``core_radius`` with ``n_lobes`` lobes budding off it in branching chains."""
    radii = np.concatenate([[core_radius], rng.uniform(*lobe_radius, size=n_lobes)])

    def core_or_last(count: int) -> int:
        return 0 if rng.random() < 0.35 or count == 1 else count - 1

    return _bud_lobes(rng, radii, core_or_last, step=(0.7, 0.9))


def _bud_lobes(
    rng, radii: np.ndarray, pick_parent, step: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Place lobe 1, 2, ... of ``radii`` touching a parent chosen by ``pick_parent(count)``; lobe 0 at 0.

    A lobe that would come within 0.9 of the larger radius of an existing lobe is drawn again
    (up to 50 times; the last try is kept), so no lobe swallows another.
    """
    centres = [np.zeros(3)]
    for index in range(1, len(radii)):
        for _ in range(50):
            parent = pick_parent(len(centres))
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            candidate = centres[parent] + (radii[parent] + radii[index]) * rng.uniform(*step) * direction
            gaps = np.linalg.norm(np.array(centres) - candidate, axis=1) - 0.9 * np.maximum(
                radii[: len(centres)], radii[index]
            )
            if (gaps > 0).all():
                break
        centres.append(candidate)
    return np.array(centres), radii


def _soft_cluster(rng, shape, centre, offsets, radii, edge_width) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Partial-volume membership of a union of lobes (see :func:`grow_lobes`) on its bounding box."""
    extent = int(np.ceil((np.linalg.norm(offsets, axis=1) + radii).max())) + 3
    box, grids = _box(shape, centre, extent)
    points = np.stack(grids, axis=-1)
    inside = np.full(points.shape[:3], np.inf)
    for offset, radius in zip(offsets, radii, strict=True):
        inside = np.minimum(inside, np.linalg.norm(points - offset, axis=-1) - radius)
    bumps = smooth_noise(rng, inside.shape, scale=1.6)
    hard = inside + min(1.2, 0.25 * radii.min()) * bumps < 0
    return _partial_volume(hard, edge_width), box


def _box(shape, centre, extent: int):
    """Bounding box of half-size ``extent`` around ``centre`` (clipped to the volume) and its offset grids."""
    box = tuple(
        slice(max(0, int(c) - extent), min(s, int(c) + extent + 1))
        for c, s in zip(centre, shape, strict=True)
    )
    grids = np.meshgrid(
        *[np.arange(b.start, b.stop) - c for b, c in zip(box, centre, strict=True)], indexing="ij"
    )
    return box, grids


def _partial_volume(hard: np.ndarray, edge_width: float) -> np.ndarray:
    """Membership 0..1 from a hard mask reduced to its largest connected part (one structure, one label)."""
    components, n = ndimage.label(hard)
    if n > 1:
        hard = components == 1 + np.argmax(ndimage.sum_labels(hard, components, index=range(1, n + 1)))
    # Partial-volume membership from the signed distance to the final mask, so label and look agree.
    signed = ndimage.distance_transform_edt(~hard) - ndimage.distance_transform_edt(hard)
    signed -= 0.5 * np.sign(signed)  # voxel centres on either side of the edge sit half a voxel from it
    return 1.0 / (1.0 + np.exp(signed / max(edge_width, 1e-3)))


def _roi(rng, shape) -> np.ndarray:
    centre = (np.array(shape) - 1) / 2
    grids = np.meshgrid(*[np.arange(s) - c for s, c in zip(shape, centre, strict=True)], indexing="ij")
    semi = np.array(shape) * np.array([0.46, 0.44, 0.47])
    rho = np.sqrt(sum((g / a) ** 2 for g, a in zip(grids, semi, strict=True)))
    return rho + 0.04 * smooth_noise(rng, shape, scale=6.0) < 1.0


@dataclass
class _Canvas:
    """The volumes a case is drawn into, structure by structure."""

    roi: np.ndarray
    inner: np.ndarray  # distance to the ROI edge
    membership: np.ndarray  # partial-volume lesion-look membership (lesions and look-alikes)
    labels: np.ndarray
    occupied: np.ndarray
    nodule: np.ndarray  # "nodules": partial-volume nodule membership
    lookalike: np.ndarray  # "nodules": hard masks of the look-alike masses

    @classmethod
    def empty(cls, roi: np.ndarray) -> _Canvas:
        shape = roi.shape
        return cls(
            roi=roi,
            inner=ndimage.distance_transform_edt(roi),
            membership=np.zeros(shape, dtype=np.float32),
            labels=np.zeros(shape, dtype=np.uint8),
            occupied=np.zeros(shape, dtype=bool),
            nodule=np.zeros(shape, dtype=np.float32),
            lookalike=np.zeros(shape, dtype=bool),
        )


def _place_structure(rng, config, canvas: _Canvas, label: int, mass: bool = False):
    """Rejection-sample one structure inside the ROI, 3 voxels clear of the others.

    Returns its (hard mask, box), or None if none fits. ``mass`` ("nodules" style only) makes it a
    big mass, drawn with ``label`` 0: whether it is a lesion is decided once all masses are placed.
    """
    shape = canvas.roi.shape
    inner, occupied = canvas.inner, canvas.occupied
    clearance = ndimage.distance_transform_edt(~occupied) if mass else None
    for _ in range(60):
        if config.style == "blobs" or (config.style == "nodules" and not mass):
            radius = rng.uniform(*(config.large_radius if label == 2 else config.small_radius))
            reach = radius
        elif mass:
            radius = rng.uniform(*config.mass_radius)
            reach = radius
        elif config.style == "masses" and label == 2:
            core = rng.uniform(*config.core_radius)
            n_lobes = int(rng.integers(config.mass_lobes[0], config.mass_lobes[1] + 1))
            offsets, radii = grow_mass(rng, core, n_lobes, config.lobe_radius)
            reach = float(np.median(np.linalg.norm(offsets, axis=1) + radii))
        else:
            lobes = config.large_lobes if label == 2 else config.small_lobes
            offsets, radii = grow_lobes(rng, int(rng.integers(lobes[0], lobes[1] + 1)), config.lobe_radius)
            offsets -= offsets.mean(axis=0)  # centre the structure on its centroid
            reach = float(np.median(np.linalg.norm(offsets, axis=1) + radii))
        if mass:  # near the ROI edge and clear of the others, so that two fit (a third sometimes)
            room = (inner > reach * 1.2 + 2) & (inner < reach * 1.2 + 12) & (clearance > reach + 3)
            candidates = np.argwhere(room)
        else:
            candidates = np.argwhere(inner > reach * 0.9 + 2)
        if len(candidates) == 0:
            continue
        centre = candidates[rng.integers(len(candidates))]
        if config.style in ("blobs", "nodules"):
            soft, box = _soft_blob(rng, shape, centre, radius, config.edge_width, 0.2 if mass else 0.35)
        else:
            soft, box = _soft_cluster(rng, shape, centre, offsets, radii, config.edge_width)
        hard = soft > 0.5
        halo = ndimage.binary_dilation(hard, iterations=3)
        if (occupied[box] & halo).any() or (hard & ~canvas.roi[box]).any():
            continue
        canvas.membership[box] = np.maximum(canvas.membership[box], soft)
        canvas.labels[box][hard] = label
        occupied[box] |= hard
        return hard, box
    return None


def _place_masses(rng, config, canvas: _Canvas, count: int, seed: int) -> None:
    """Place ``count`` masses (at least two), then make one or two of them lesions at random.

    Masses go first, on an empty canvas; when fewer than two fit, the canvas is cleared and the
    masses are drawn again (the random stream goes on, so the case stays deterministic).
    """
    if not (canvas.inner > config.mass_radius[0] * 1.2 + 2).any():  # not even the smallest mass fits
        raise ValueError(f"case {seed}: two masses do not fit in {list(canvas.roi.shape)}")
    for _ in range(10):
        masses = [m for m in (_place_structure(rng, config, canvas, 0, mass=True) for _ in range(count)) if m]
        if len(masses) >= 2:
            break
        canvas.membership[:] = 0
        canvas.occupied[:] = False
    else:
        raise ValueError(f"case {seed}: two masses do not fit in {list(canvas.roi.shape)}")
    order = rng.permutation(len(masses))
    lesions = {order[0]} | ({order[2]} if len(masses) > 2 and rng.random() < 0.5 else set())
    for index, (hard, box) in enumerate(masses):
        if index in lesions:
            canvas.labels[box][hard] = 2
            _add_nodule(rng, config, hard, box, canvas.nodule)
        else:
            canvas.lookalike[box] |= hard


def _add_nodule(rng, config, hard: np.ndarray, box, nodule: np.ndarray) -> None:
    """A nodule just inside the wall of the mass ``hard`` (on ``box``), anywhere along it."""
    radius = rng.uniform(*config.nodule_radius)
    depth = ndimage.distance_transform_edt(hard)
    inset = radius * 1.45 + 2  # room for the nodule's longest axis inside the wall
    wall = (depth > inset) & (depth <= inset + 1.5)
    candidates = np.argwhere(wall if wall.any() else depth == depth.max())
    local = candidates[rng.integers(len(candidates))]
    centre = np.array([b.start for b in box]) + local
    soft, nodule_box = _soft_blob(rng, nodule.shape, centre, radius, config.edge_width)
    nodule[nodule_box] = np.maximum(nodule[nodule_box], soft)


def make_case(seed: int, config: PhantomConfig = PhantomConfig()) -> tuple[np.ndarray, np.ndarray]:
    """One case: image (C, X, Y, Z) float32 and labels (X, Y, Z) uint8, both in voxel order."""
    image, labels, _ = make_case_with_parts(seed, config)
    return image, labels


def make_case_with_parts(seed: int, config: PhantomConfig = PhantomConfig()):
    """:func:`make_case` and its hidden parts {"nodule": mask, "look-alike": mask} (used by "nodules")."""
    rng = np.random.default_rng(seed)
    shape = tuple(config.shape)
    canvas = _Canvas.empty(_roi(rng, shape))
    counts = {
        label: int(rng.integers(lo, hi + 1)) for label, (lo, hi) in ((2, config.n_large), (1, config.n_small))
    }
    for label in (2, 1):  # large structures first: they need the room
        if config.style == "nodules" and label == 2:
            _place_masses(rng, config, canvas, counts[2], seed)
            continue
        for _ in range(counts[label]):
            _place_structure(rng, config, canvas, label)

    membership, nodule, roi = canvas.membership, canvas.nodule, canvas.roi
    channels = []
    for c in range(len(CHANNEL_NAMES)):
        tissue = TISSUE_MEAN[c] * (1 + config.texture * smooth_noise(rng, shape, scale=3.0))
        lesion = LESION_MEAN[c] * (1 + config.texture * smooth_noise(rng, shape, scale=3.0))
        image = tissue * (1 - membership) + lesion * membership
        if config.style == "nodules":
            image = image * (1 - nodule) + NODULE_MEAN[c] * nodule
        image *= 1 + config.bias * smooth_noise(rng, shape, scale=20.0)
        image += config.noise * TISSUE_MEAN[c] * rng.standard_normal(shape)
        image = ndimage.gaussian_filter(image, 0.5)
        channels.append(np.where(roi, np.clip(image, 1.0, None), 0.0))
    labels = canvas.labels
    labels[~roi] = 0
    parts = {"nodule": (nodule > 0.5) & roi, "look-alike": canvas.lookalike & roi}
    return np.stack(channels).astype(np.float32), labels, parts


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
    jobs: int = 1,
) -> Path:
    """Write ``cases`` phantoms (seeds ``seed``, ``seed+1``, ...) as an MSD or nnU-Net raw folder.

    ``jobs`` > 1 generates cases in that many processes; each case depends only on its own seed,
    so the files are the same whatever ``jobs`` is.
    """
    check_layout(layout)
    out = Path(out)
    training = write_cases(
        out, prefix, seed, cases, _write_case, config, layout, out, affine_for(config), jobs=jobs
    )
    meta = {
        "name": "AutofocusPhantom",
        "description": "Synthetic phantoms: label decided by structure size (napari-autofocus).",
        "reference": "napari-autofocus src_training.phantom_cases",
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


def _write_case(case, case_seed, config, layout, out, affine) -> dict:
    image, labels = make_case(case_seed, config)
    return save_case(out, case, layout, np.round(image).astype(np.int16), labels, affine, PHANTOM_MARK)
