"""The one prediction path every caller takes: the model card's preprocessing, the network on the
model's grid, the outputs back on the scan's grid, and a report of what was done and what did not
match the model.

nnU-Net's preprocess -> predict -> export, in one place, so that ``predict``, ``evaluate --model``,
the trainer's validation, the phantom benchmark and the plugin's Segment, Compare and
Counterfactuals give the same labels for the same scan:

1. :func:`preprocess`: normalise as the card says (:mod:`napari_autofocus.inference.normalization`), then
   resample to the card's ``target_spacing`` when it has one (linear for images, nearest for masks
   and labels). The crop region is the bounding box of the voxels non-zero in any raw channel.
2. :func:`run_network`: :func:`~napari_autofocus.inference.predict_volume` on that grid.
3. :func:`to_source`: labels, probabilities, logits and attention back to the scan's grid by
   nearest neighbour (each scan voxel shows what the network computed at the nearest network
   voxel: no invented values, labels stay the arg-max of the probabilities, attention still sums
   to 1).

:func:`check_scan` lists what does not match the model (voxel size, channel names, intensities, a
phantom model on a real scan) as one-line warnings; :class:`Report` carries them with the steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.normalization import DEFAULT_NORMALIZATION, normalize, padding_value, roi_mask
from napari_autofocus.inference.regions import PlaneBoxes
from napari_autofocus.inference.scan_checks import (  # noqa: F401 (the checks are part of this API)
    NONFINITE_CHOICES,
    SPACING_TOLERANCE,
    Contract,
    check_channel_count,
    check_channels,
    check_input_dtype,
    check_intensities,
    check_phantom,
    check_resampling,
    check_scan,
    check_spacing,
    mm,
)
from napari_autofocus.nets.card import ModelCard


@dataclass
class Preprocessed:
    """A scan ready for the network: normalised, on the network's grid."""

    image: np.ndarray  # (C, D, H, W) float32
    roi: np.ndarray | None  # (D, H, W) bool: the normalisation's region (training samples from it)
    foreground_box: tuple  # box of the voxels non-zero in any raw channel: what is computed
    spacing: tuple[float, float, float]  # the network grid's voxel size (mm)
    source_shape: tuple[int, int, int]
    source_spacing: tuple[float, float, float]
    label: np.ndarray | None = None  # the label map on the network grid, when one was given
    foreground_planes: PlaneBoxes | None = None  # that foreground's box in each plane (not resampled)

    @property
    def resampled(self) -> bool:
        return tuple(self.image.shape[1:]) != tuple(self.source_shape)


@dataclass(frozen=True)
class PredictOptions:
    """How to predict: every choice the CLI, the plugin and ``evaluate`` make, in one place (the
    defaults are the engine's)."""

    mode: str = "whole"
    device: str = "auto"
    probabilities: bool = False
    attention: bool = False
    crop: bool = True
    nonfinite: str = "error"
    memory_budget_gib: float | None = None  # None: the engine's default budget
    precision: str = "fp32"
    regions: bool = True  # compute only the foreground's box in each plane (whole mode)


def nearest_indices(n_from: int, n_to: int) -> np.ndarray:
    """For each of ``n_to`` cells, the index of the ``n_from`` cell whose centre is nearest."""
    return np.minimum(((np.arange(n_to) + 0.5) * (n_from / n_to)).astype(np.intp), n_from - 1)


def resample_nearest(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Nearest-neighbour resampling of the last three axes to ``shape`` (any dtype, NaN kept)."""
    shape = tuple(int(n) for n in shape)
    if tuple(array.shape[-3:]) == shape:
        return array
    index = np.ix_(*(nearest_indices(a, b) for a, b in zip(array.shape[-3:], shape, strict=True)))
    return np.asarray(array)[(..., *index)]


def box_of(mask: np.ndarray) -> tuple:
    """((z0, z1), (y0, y1), (x0, x1)) around the true voxels; the whole volume when there are none."""
    if not mask.any():
        return tuple((0, n) for n in mask.shape)
    out = []
    for axis in range(3):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        out.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(out)


def box_to_shape(box, shape_from: Sequence[int], shape_to: Sequence[int]) -> tuple:
    """A box on one grid expressed on another grid of the same extent (covering, never smaller)."""
    out = []
    for (a, b), m, n in zip(box, shape_from, shape_to, strict=True):
        out.append((int(np.floor(a * n / m)), min(int(n), int(np.ceil(b * n / m)))))
    return tuple(out)


def preprocess(
    raw: np.ndarray,
    spacing: Sequence[float],
    normalization: dict | None = None,
    target_spacing: Sequence[float] | None = None,
    label: np.ndarray | None = None,
    in_place: bool = False,
) -> Preprocessed:
    """Normalise a raw (C, D, H, W) scan as a card says and resample it to ``target_spacing``.

    ``in_place``: the caller hands the scan over; it is normalised where it lies (no second copy
    of a big scan)."""
    spec = {**DEFAULT_NORMALIZATION, **(normalization or {})}
    given = raw
    check_input_dtype(raw)
    raw = np.asarray(raw, dtype=np.float32)
    in_place = in_place or raw is not given  # a converted copy is ours anyway
    if raw.ndim != 4:
        raise AutofocusError(f"expected a (channels, D, H, W) image, got shape {raw.shape}")
    source_spacing = tuple(float(s) for s in spacing)
    check_resampling(raw.shape[1:], raw.shape[0], source_spacing, target_spacing)  # before it allocates
    roi = roi_mask(raw, spec.get("roi", "nonzero"))
    foreground = roi if spec.get("roi", "nonzero") == "nonzero" else roi_mask(raw, "nonzero")
    foreground_box, foreground_planes = box_of(foreground), PlaneBoxes.of_mask(foreground)
    del foreground
    source_shape = tuple(raw.shape[1:])
    image = normalize(raw, spec, roi, out=raw if in_place and raw.flags.writeable else None)
    new_spacing = source_spacing
    if target_spacing is not None and not np.allclose(source_spacing, target_spacing, rtol=1e-3):
        zoom = [s / t for s, t in zip(source_spacing, target_spacing, strict=True)]
        image = np.stack([ndimage.zoom(c, zoom, order=1, mode="nearest", grid_mode=True) for c in image])
        roi = resample_nearest(roi, image.shape[1:])
        # every network voxel whose cell touches the scan's foreground: the box covers it all
        foreground_box = box_to_shape(foreground_box, source_shape, image.shape[1:])
        foreground_planes = None  # the box, grown to the new grid, is computed whole
        if label is not None:
            label = resample_nearest(label, image.shape[1:])
        new_spacing = tuple(float(t) for t in target_spacing)
    return Preprocessed(
        image=image.astype(np.float32, copy=False),
        roi=roi,
        foreground_box=foreground_box,
        spacing=new_spacing,
        source_shape=source_shape,
        source_spacing=source_spacing,
        label=label,
        foreground_planes=foreground_planes,
    )


def run_network(
    model,
    prepared: Preprocessed,
    normalization: dict,
    options: PredictOptions = PredictOptions(),  # noqa: B008 (frozen: shared safely)
    *,
    progress=None,
    cancel=None,
):
    """The engine on the network grid, computing the foreground (its box in each plane, or its box
    when resampled) unless ``options.crop`` is False."""
    from napari_autofocus.inference.engine import predict_volume
    from napari_autofocus.inference.strategies import DEFAULT_MEMORY_BUDGET_GIB

    roi = prepared.foreground_box
    if prepared.foreground_planes is not None and prepared.foreground_planes.bounding_box() is not None:
        roi = prepared.foreground_planes  # (an all-zero scan keeps its box: the whole volume)
    budget = options.memory_budget_gib
    return predict_volume(
        model,
        prepared.image,
        mode=options.mode,
        device=options.device,
        probabilities=options.probabilities,
        attention=options.attention,
        crop=options.crop,
        roi=roi if options.crop else None,
        regions=options.regions,
        pad_value=padding_value(normalization),
        memory_budget_gib=DEFAULT_MEMORY_BUDGET_GIB if budget is None else budget,
        precision=options.precision,
        progress=progress,
        cancel=cancel,
    )


def to_source(prediction, prepared: Preprocessed):
    """The engine's outputs brought back from the network grid to the scan's grid."""
    if not prepared.resampled:
        return prediction
    shape = prepared.source_shape

    def back(array):
        return None if array is None else resample_nearest(array, shape)

    return dataclasses.replace(
        prediction,
        labels=back(prediction.labels),
        probabilities=back(prediction.probabilities),
        logits=back(prediction.logits),
        attention={name: back(a) for name, a in prediction.attention.items()},
        computed=back(prediction.computed),
        crop_box=None
        if prediction.crop_box is None
        else box_to_shape(prediction.crop_box, prepared.image.shape[1:], shape),
    )


# -- inputs that are not numbers -------------------------------------------------------------------


def replace_nonfinite(
    raw: np.ndarray, policy: str = "error", source: str = "the scan"
) -> tuple[np.ndarray, int]:
    """(scan, how many voxels were NaN or infinite); refuses them unless ``policy`` is "background".

    "background" sets them to 0, the raw background that normalisation and the crop treat as
    outside the scan, on purpose and reported, never silently.
    """
    if policy not in NONFINITE_CHOICES:
        raise AutofocusError(
            f"non-finite policy must be one of {', '.join(NONFINITE_CHOICES)}, got {policy!r}"
        )
    count = sum(
        int(np.count_nonzero(~np.isfinite(channel))) for channel in raw
    )  # per channel: small temporaries
    if count == 0:
        return raw, 0
    if policy == "error":
        raise AutofocusError(
            f"{source} has {count} NaN or infinite voxel(s) ({100 * count / raw.size:.3g} % of the values); "
            "fix the file, or set them to the background value on purpose (predict/evaluate "
            "--nonfinite background)"
        )
    return np.where(np.isfinite(raw), raw, np.float32(0)), count


# -- the whole path -------------------------------------------------------------------------------


@dataclass
class Report:
    """What the predictor did to a scan and what did not match the model."""

    channels: list[str]
    normalization: dict
    source_spacing: tuple[float, float, float]
    network_spacing: tuple[float, float, float]
    resampled: bool
    warnings: list[str] = field(default_factory=list)

    def steps(self) -> list[str]:
        out = [f"normalised ({self.normalization.get('scheme', 'zscore')})"]
        if self.resampled:
            out.append(f"resampled {mm(self.source_spacing)} -> {mm(self.network_spacing)} and back")
        return out

    def to_dict(self) -> dict:
        return {
            "channels": list(self.channels),
            "normalization": dict(self.normalization),
            "source_spacing": list(self.source_spacing),
            "network_spacing": list(self.network_spacing),
            "resampled": self.resampled,
            "warnings": list(self.warnings),
        }


# -- the public entry ------------------------------------------------------------------------------


@dataclass
class Scan:
    """A raw (C, D, H, W) scan and what is known about it."""

    image: np.ndarray
    spacing: Sequence[float]
    channel_names: Sequence[str] | None = None  # file or layer names: compared with the card's
    description: str | None = None  # the NIfTI description (marks our phantoms)
    source: str = "the scan"  # how messages name it
    arrays: Sequence[np.ndarray] | None = None  # the layers' own arrays, read by the intensity checks
    strict_names: bool = False  # the names are a dataset's modalities: compared strictly
    owned: bool = False  # handed over by the caller: normalised in place


def predict(
    model,
    card: ModelCard,
    scan: Scan,
    options: PredictOptions = PredictOptions(),  # noqa: B008 (frozen: shared safely)
    *,
    progress=None,
    cancel=None,
):
    """(prediction on the scan's grid, :class:`Report`): the entry the CLI's ``predict`` and
    ``evaluate``, the benchmarks and the plugin's runs share, so checks, preprocessing and outputs
    are the same.

    NaN or infinite voxels are refused with a message naming ``scan.source``, unless
    ``options.nonfinite`` is "background". ``progress(done, total)`` and ``cancel`` (an event or a
    callable) go to the engine.
    """
    check_channel_count(card, scan.image.shape[0])
    contract = Contract.from_card(card)
    check_input_dtype(scan.image, scan.source)
    growth = check_resampling(
        scan.image.shape[1:],
        scan.image.shape[0],
        scan.spacing,
        contract.target_spacing,
        options.memory_budget_gib,
    )
    raw, replaced = replace_nonfinite(
        np.asarray(scan.image, dtype=np.float32), options.nonfinite, scan.source
    )
    owned = scan.owned or raw is not scan.image
    warnings = check_scan(
        raw, scan.spacing, contract, scan.channel_names, scan.description, scan.arrays, scan.strict_names
    )
    warnings += growth
    if replaced:
        warnings.insert(
            0, f"{replaced} NaN or infinite voxel(s) were set to the background value (0), as asked"
        )
    prepared = preprocess(raw, scan.spacing, contract.normalization, contract.target_spacing, in_place=owned)
    del raw  # normalised in place when owned: the prepared image is the scan now
    prepared.roi = None  # only training samples from it: room for the network
    prediction = run_network(
        model, prepared, contract.normalization, options, progress=progress, cancel=cancel
    )
    report = Report(
        channels=list(scan.channel_names or contract.modalities),
        normalization=contract.normalization,
        source_spacing=prepared.source_spacing,
        network_spacing=prepared.spacing,
        resampled=prepared.resampled,
        warnings=warnings,
    )
    return to_source(prediction, prepared), report


def provenance(prediction, report: dict, card: ModelCard) -> dict:
    """What every prediction record says of the run, the same in ``predict``'s JSON and in the
    plugin's layers and exports (``report``: :meth:`Report.to_dict`)."""
    from napari_autofocus import __version__
    from napari_autofocus.inference.regions import OUTSIDE_COMPUTED

    box = prediction.crop_box
    return {
        "model_card": card.to_dict(),
        "preprocessing": dict(report),
        "warnings": list(report.get("warnings", [])),
        "mode": prediction.mode,
        "device": prediction.device,
        "computed_box": [list(axis) for axis in box] if box else None,
        "outside_computed_box": OUTSIDE_COMPUTED,
        "seconds": round(prediction.seconds, 3),
        "napari_autofocus_version": __version__,
    }
