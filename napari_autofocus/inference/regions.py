"""Which part of a volume the engine computes: a given box or mask, the foreground's bounding box,
and the box read with a margin of real data around it (padding only beyond the volume's border)."""

from __future__ import annotations

import numpy as np

from napari_autofocus.errors import AutofocusError


def crop_with_margin(image: np.ndarray, box, margin: int, pad_value: float, size=None) -> np.ndarray:
    """The box of ``image`` (C, D, H, W) grown by ``margin`` per side (and to ``size`` + margin at
    the end), read from the image where it has data and ``pad_value`` beyond its border."""
    size = size or tuple(b - a for a, b in box)
    out = np.full((image.shape[0], *(n + 2 * margin for n in size)), pad_value, dtype=np.float32)
    src, dst = [], []
    for (a, _), n, extent in zip(box, size, image.shape[1:], strict=True):
        lo, hi = a - margin, a + n + margin
        src.append(slice(max(lo, 0), min(hi, extent)))
        dst.append(slice(max(lo, 0) - lo, min(hi, extent) - lo))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def region_box(mask, shape, mode: str, crop: bool, explicit: bool):
    """The box to compute, ((z0, z1), (y0, y1), (x0, x1)); None when an explicit ROI is empty."""
    whole = tuple((0, n) for n in shape)
    if mask is None or (not crop and mode != "reference"):
        return whole
    if not mask.any():
        return None if explicit else whole
    box = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def given_box(roi, shape) -> tuple | None:
    """A ((z0, z1), (y0, y1), (x0, x1)) ROI clipped to the volume; None when nothing is left."""
    try:
        box = [(int(a), int(b)) for a, b in roi]
    except (TypeError, ValueError):
        raise AutofocusError(
            f"roi must be a boolean mask of shape {tuple(shape)} or ((z0, z1), (y0, y1), (x0, x1))"
        ) from None
    if len(box) != 3:
        raise AutofocusError(f"a bounding box needs 3 (start, stop) pairs, got {len(box)}")
    clipped = tuple((max(a, 0), min(b, n)) for (a, b), n in zip(box, shape, strict=True))
    return None if any(b <= a for a, b in clipped) else clipped


def roi_mask_of(roi, shape) -> np.ndarray | None:
    """A (D, H, W) boolean mask from a mask of that shape or a box (see :func:`_given_box`)."""
    if roi is None:
        return None
    if isinstance(roi, np.ndarray) and roi.shape == tuple(shape):
        return roi.astype(bool, copy=False)
    box = given_box(roi, shape)
    mask = np.zeros(shape, dtype=bool)
    if box is not None:
        mask[tuple(slice(a, b) for a, b in box)] = True
    return mask
