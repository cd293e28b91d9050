"""The scan that goes into every exported package as its test input, and where it sits.

A package's test input and outputs let a validator check that the package reproduces our numbers.
The input is a cube of the bundled sample whose channels fit the model (the brain for 4-channel
models, the phantom for 2-channel ones, or a scan the user names), normalised as the card says and
centred on its labelled lesion, placed in a canvas of the smallest size the package's axes allow.
The canvas around the cube holds the "outside" marker, which the network does not compute, so a
validator's runs cost what the cube costs even where the minimum size is 173^3 (AFN-6).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_autofocus.errors import AutofocusError


@dataclass
class ExchangeInput:
    """The test input (1, C, D, H, W): a normalised cube of a scan inside a canvas of the outside marker."""

    image: np.ndarray
    source: str  # the scan's file name
    start: tuple[int, int, int]  # the cube's first voxel in the canvas
    shape: tuple[int, int, int]  # the cube's size
    scan_start: tuple[int, int, int]  # the cube's first voxel in the scan

    @property
    def scan_slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, a + n) for a, n in zip(self.start, self.shape, strict=True))


TEST_EDGE = 40  # voxels per axis of the cube cut from the scan


def sample_for(in_channels: int) -> tuple[Path, Path | None]:
    """The bundled sample scan with this many channels, and its labels."""
    from napari_autofocus._sample_data import SAMPLES, sample_paths

    for key in SAMPLES:
        image, labels = sample_paths(key)
        if image.is_file() and _channels(image) == in_channels:
            return image, labels if labels.is_file() else None
    raise AutofocusError(
        f"no bundled sample has {in_channels} channel(s) for the package's test tensors: "
        f"give a scan with {in_channels} channel(s) (--sample)"
    )


def _channels(path: Path) -> int:
    import nibabel as nib

    shape = nib.load(str(path)).shape
    return shape[3] if len(shape) == 4 else 1


def read_scan(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """(C, D, H, W) float32 in napari's order (what the plugin feeds the network) and the voxel
    size (mm) of a 3D or 4D NIfTI file."""
    from napari_autofocus.io.nifti import load_nifti

    volume = load_nifti(path)
    data = np.asarray(volume.data, dtype=np.float32)
    channels = data[None] if data.ndim == 3 else data
    return np.ascontiguousarray(channels), tuple(float(s) for s in volume.geometry.spacing)


def valid_size(n: int, minimum: int, step: int) -> int:
    """The smallest size >= n of the form minimum + k * step."""
    return minimum + step * max(0, -(-(n - minimum) // step))


def exchange_input(
    card, minimum: int, step: int, scan: Path | None = None, labels: Path | None = None, edge: int = TEST_EDGE
) -> ExchangeInput:
    """The test input for a model with this card and axes of sizes ``minimum + k * step``."""
    from napari_autofocus.exchange.packaged_network import OUTSIDE
    from napari_autofocus.inference.predictor import preprocess

    if scan is None:
        scan, labels = sample_for(card.in_channels)
    raw, spacing = read_scan(Path(scan))
    if raw.shape[0] != card.in_channels:
        raise AutofocusError(
            f"{Path(scan).name} has {raw.shape[0]} channel(s); the model expects {card.in_channels}"
        )
    truth = read_scan(Path(labels))[0][0] if labels is not None else None
    prepared = preprocess(raw, spacing, card.normalization, card.target_spacing, label=truth, in_place=True)
    focus = prepared.label if prepared.label is not None and prepared.label.any() else prepared.roi
    centre = [int(round(float(c.mean()))) for c in np.nonzero(focus)]
    full = prepared.image.shape[1:]
    shape = tuple(min(edge, n) for n in full)
    scan_start = tuple(min(max(c - e // 2, 0), n - e) for c, e, n in zip(centre, shape, full, strict=True))
    image = prepared.image[(slice(None), *(slice(a, a + e) for a, e in zip(scan_start, shape, strict=True)))]
    canvas = tuple(valid_size(n, minimum, step) for n in shape)
    start = tuple((c - n) // 2 for c, n in zip(canvas, shape, strict=True))
    out = np.full((1, image.shape[0], *canvas), OUTSIDE, dtype=np.float32)
    case = ExchangeInput(out, Path(scan).name, start, shape, scan_start)
    out[(0, slice(None), *case.scan_slices)] = image
    return case
