"""Does a scan suit a model? The model's input contract (from its card) and the checks that list,
as one-line warnings, what differs: voxel size, channel names, intensities, a phantom-trained model
on a real scan. Shared by the predictor (warnings in every report) and Segment (before a run)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.normalization import DEFAULT_NORMALIZATION
from napari_autofocus.io.nifti import MAX_VOXELS, PHANTOM_MARK
from napari_autofocus.nets.card import ModelCard

SPACING_TOLERANCE = 0.1  # relative voxel-size difference that counts as "not the model's spacing"


@dataclass(frozen=True)
class Contract:
    """What a model expects of its input, read from its card."""

    modalities: tuple[str, ...]
    normalization: dict
    target_spacing: tuple[float, float, float] | None  # resample to this grid; None = the scan's own
    trained_spacing: tuple[float, float, float] | None  # voxel size of the training data
    trained_on: str
    phantom: bool

    @classmethod
    def from_card(cls, card: ModelCard) -> Contract:
        dataset = str(card.provenance.get("dataset") or "")
        return cls(
            modalities=tuple(card.modalities),
            normalization={**DEFAULT_NORMALIZATION, **(card.normalization or {})},
            target_spacing=_triple(card.target_spacing),
            trained_spacing=_triple(card.spacing),
            trained_on=dataset,
            phantom="phantom" in dataset.lower() or "phantom" in (card.description or "").lower(),
        )


def _triple(value) -> tuple[float, float, float] | None:
    return None if value is None else tuple(float(v) for v in value)


def mm(spacing) -> str:
    """(1, 1, 1.5) -> "1x1x1.5 mm"."""
    return "x".join(f"{s:g}" for s in spacing) + " mm"


_GENERIC_WORDS = {"like", "weighted", "image", "scan", "mri", "mr", "volume", "channel", "case"}


def _words(name: str) -> set[str]:
    return {w for w in re.split(r"[^a-z0-9]+", name.lower()) if w and w not in _GENERIC_WORDS}


def _same_modality(given: str, expected: str) -> bool:
    """ "case [T1-like]" and "BraTS_001_flair" name T1-like and FLAIR: every word of the modality's
    name (generic words aside) is one of the given name's words."""
    wanted = _words(expected)
    return bool(wanted) and wanted <= _words(given)


def check_spacing(spacing: Sequence[float], contract: Contract) -> list[str]:
    if contract.target_spacing is not None:
        if not np.allclose(spacing, contract.target_spacing, rtol=1e-3):
            return [
                f"voxel size {mm(spacing)} is not the model's {mm(contract.target_spacing)}: resampled "
                "to the model's grid and the outputs back to the scan's"
            ]
        return []
    trained = contract.trained_spacing
    if trained is None:
        return []
    relative = np.abs(np.asarray(spacing) - np.asarray(trained)) / np.asarray(trained)
    if (relative > SPACING_TOLERANCE).any():
        return [
            f"voxel size {mm(spacing)} differs from the {mm(trained)} the model was trained on, and "
            "the model does not resample (it was trained without --spacing): expect poorer results"
        ]
    return []


def check_channels(
    names: Sequence[str] | None, contract: Contract, arrays: Sequence[np.ndarray] | None = None,
    strict: bool = False,
) -> list[str]:  # fmt: skip
    """Channel names that point at another of the model's modalities, or the same image twice.

    ``strict``: the names are modality names (e.g. a dataset.json's), so any difference counts.
    """
    warnings = []
    expected = contract.modalities
    if names and expected and len(names) == len(expected):
        for given, wanted in zip(names, expected, strict=True):
            if _same_modality(given, wanted):
                continue
            other = next((m for m in expected if m != wanted and _same_modality(given, m)), None)
            if other is not None:
                warnings.append(f"the {wanted} input is {given!r}, which looks like {other}")
            elif strict:
                warnings.append(f"the {wanted} input is called {given!r}")
        if warnings:
            warnings = [
                f"channels may be in the wrong order (the model expects {', '.join(expected)}): "
                + "; ".join(warnings)
            ]
    if arrays is not None and len(arrays) > 1:
        for i in range(len(arrays)):
            for j in range(i + 1, len(arrays)):
                a, b = arrays[i], arrays[j]
                if a is b or (np.shape(a) == np.shape(b) and np.array_equal(a, b)):
                    label = lambda k: expected[k] if k < len(expected) else f"channel {k + 1}"  # noqa: E731
                    warnings.append(f"the same image is given as {label(i)} and {label(j)}")
    return warnings


def check_intensities(raw: np.ndarray, contract: Contract) -> list[str]:
    """Intensities the card's normalisation is not made for."""
    spec = contract.normalization
    scheme, roi_rule = spec.get("scheme", "zscore"), spec.get("roi", "nonzero")
    if not raw.any():
        return ["the scan is zero everywhere: there is nothing to segment"]
    raw = raw[:, ::2, ::2, ::2]  # every 8th voxel: plenty for these statistics, cheap on big scans
    nonzero = np.zeros(raw.shape[1:], dtype=bool)
    for channel in raw:
        nonzero |= channel != 0
    if not nonzero.any():  # a few scattered voxels: too little to judge
        return []
    warnings = []
    names = list(contract.modalities) or [f"channel {c + 1}" for c in range(raw.shape[0])]
    names += [f"channel {c + 1}" for c in range(len(names), raw.shape[0])]
    for c, channel in enumerate(raw):
        values = channel[nonzero]
        mean, std = float(values.mean()), float(values.std())
        if std <= 1e-6 * max(1.0, abs(mean)):
            warnings.append(f"{names[c]} is constant ({mean:g}) inside the scan")
        elif scheme == "none" and (abs(mean) > 3 or not 0.1 < std < 10):
            warnings.append(
                f"{names[c]} has mean {mean:.3g} and std {std:.3g}, but the model expects intensities "
                "already normalised (mean about 0, std about 1)"
            )
    if scheme != "none" and roi_rule == "nonzero" and nonzero.mean() > 0.995:
        warnings.append(
            "the scan has no zero background: the model normalises over the non-zero voxels "
            "(skull-stripped scans with background 0), which here is the whole volume"
        )
    return warnings


def check_phantom(contract: Contract, scan_description: str | None) -> list[str]:
    if not contract.phantom or PHANTOM_MARK in (scan_description or ""):
        return []
    if "brain" in contract.trained_on.lower():
        return [
            "this model was trained on simulated tumours on the MNI152 template brain "
            f"({contract.trained_on}): a teaching model; on a patient's scan it shows how it decides, "
            "not where a tumour is"
        ]
    return [
        f"this model was trained on synthetic phantoms ({contract.trained_on or 'phantom data'}): a "
        "teaching model, whose output on a real scan means little"
    ]


def check_scan(
    raw: np.ndarray,
    spacing: Sequence[float],
    contract: Contract,
    channel_names: Sequence[str] | None = None,
    scan_description: str | None = None,
    arrays: Sequence[np.ndarray] | None = None,
    strict_names: bool = False,
) -> list[str]:
    """Every way this scan does not match the model, one line each (empty when it matches)."""
    return [
        *check_spacing(spacing, contract),
        *check_channels(channel_names, contract, arrays, strict_names),
        *check_intensities(raw, contract),
        *check_phantom(contract, scan_description),
    ]


GROWTH_WARNING = 8  # resampling that makes the volume this many times larger is said before it runs


def check_channel_count(card: ModelCard, given: int, where: str = "", hint: str = "") -> None:
    """Refuse a scan whose channel count is not the model's, in one wording for every caller
    (``where``: what holds the scan, e.g. "case_01: "; ``hint``: how to fix it there)."""
    if given != card.in_channels:
        names = ", ".join(card.modalities) or f"{card.in_channels} channels"
        raise AutofocusError(
            f"{where}the model expects {card.in_channels} input channel(s) ({names}) but got {given}{hint}"
        )


NONFINITE_CHOICES = ("error", "background")  # what to do with NaN or infinite voxels (see the predictor)


def check_input_dtype(raw: np.ndarray, source: str = "the scan") -> None:
    """Refuse voxels that are not real numbers: converting would drop a complex part or RGB planes."""
    kind = np.asarray(raw).dtype
    if kind.kind not in "iuf" or kind.fields is not None:
        raise AutofocusError(
            f"{source}: voxels of type {kind} (e.g. complex, RGB or bool) are not supported; expected "
            "real-valued intensities: uint8..uint64, int8..int64, float16, float32 or float64"
        )


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple:
    """The (D, H, W) a scan gets on the ``target`` grid (as ``scipy.ndimage.zoom`` rounds it)."""
    return tuple(int(round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))


def check_resampling(
    shape: Sequence[int],
    channels: int,
    spacing: Sequence[float],
    target: Sequence[float] | None,
    budget_gib: float | None = None,
) -> list[str]:
    """Bound resampling to the model's grid before it allocates anything; warn when it grows a lot.

    Voxel sizes in metres (0.001) or absurd ones (1e30) would give an empty or an enormous grid."""
    bad = [s for s in spacing if not (np.isfinite(s) and 0 < s < 1e6)]
    if bad:
        raise AutofocusError(
            f"the scan's voxel size {mm(spacing)} is not usable: expected finite sizes > 0 mm"
        )
    if target is None or np.allclose(spacing, target, rtol=1e-3):
        return []
    new = resampled_shape(shape, spacing, target)
    what = (
        f"resampling the {'x'.join(map(str, shape))} scan from {mm(spacing)} to the model's {mm(target)} grid"
    )
    if min(new) < 1:
        raise AutofocusError(
            f"{what} leaves {'x'.join(map(str, new))} voxels; the scan's voxel sizes look wrong "
            "(metres instead of mm?)"
        )
    voxels = int(np.prod([float(n) for n in new]))
    gib = voxels * channels * 4 / 2**30
    limit = min(MAX_VOXELS * channels * 4 / 2**30, budget_gib if budget_gib else np.inf)
    if voxels > MAX_VOXELS or gib > limit:
        raise AutofocusError(
            f"{what} would make it {'x'.join(map(str, new))} ({gib:.3g} GiB as float32), more than the "
            f"{limit:.3g} GiB allowed; check the scan's voxel sizes, or raise the memory budget"
        )
    growth = voxels / max(1, int(np.prod(shape)))
    if growth > GROWTH_WARNING:
        return [
            f"{what} makes the volume {growth:.0f}x larger ({'x'.join(map(str, new))}): the network runs "
            "over that many more voxels, and takes correspondingly longer"
        ]
    return []
