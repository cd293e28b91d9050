"""Which part of a volume the engine computes: a given box or mask, the foreground's bounding box,
the foreground's box in each of its planes, and the box read with a margin of real data around it
(padding only beyond the volume's border)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_autofocus.errors import AutofocusError

OUTSIDE_COMPUTED = (
    "label 0, background probability 1, attention NaN (whole mode computes, in each plane, the "
    "foreground's box only)"
)  # what a result holds where nothing was computed, as provenance records say it


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


@dataclass(frozen=True)
class PlaneBoxes:
    """The foreground's in-plane bounding box in each plane of the computed box: what whole mode
    outputs (label 0, background and NaN attention elsewhere), and, for every layer, which voxels
    of a slab some such output depends on, so nothing else is computed.

    ``rows[z]``, ``cols[z]``: [start, stop) of plane z (start >= stop: nothing in that plane).
    """

    rows: np.ndarray  # (D, 2) int
    cols: np.ndarray  # (D, 2) int
    plane: tuple[int, int]

    @classmethod
    def of_mask(cls, mask: np.ndarray) -> PlaneBoxes:
        """Per plane, the bounding box of ``mask`` (D, H, W)."""
        spans = []
        for axis in (2, 1):  # rows: any over columns; columns: any over rows
            hit = mask.any(axis=axis)
            n = hit.shape[1]
            first = np.where(hit.any(1), hit.argmax(1), n)
            last = np.where(hit.any(1), n - hit[:, ::-1].argmax(1), 0)
            spans.append(np.stack([first, last], 1).astype(np.int64))
        return cls(spans[0], spans[1], tuple(int(n) for n in mask.shape[1:]))

    @classmethod
    def full(cls, size) -> PlaneBoxes:
        """Every voxel of a box of ``size`` (D, H, W)."""
        depth, h, w = (int(n) for n in size)
        return cls(np.tile([0, h], (depth, 1)), np.tile([0, w], (depth, 1)), (h, w))

    @classmethod
    def from_record(cls, record: dict) -> PlaneBoxes:
        """Planes as :meth:`record` wrote them (a cache's JSON)."""
        rows, cols = (np.asarray(record[k], dtype=np.int64).reshape(-1, 2) for k in ("rows", "cols"))
        return cls(rows, cols, tuple(int(n) for n in record["plane"]))

    def record(self) -> dict:
        return {"rows": self.rows.tolist(), "cols": self.cols.tolist(), "plane": list(self.plane)}

    def bounding_box(self) -> tuple | None:
        """((z0, z1), (y0, y1), (x0, x1)) around every plane's box; None when all are empty."""
        filled = np.flatnonzero((self.rows[:, 1] > self.rows[:, 0]) & (self.cols[:, 1] > self.cols[:, 0]))
        if not filled.size:
            return None
        z0, z1 = int(filled[0]), int(filled[-1]) + 1
        rows, cols = self.rows[z0:z1], self.cols[z0:z1]
        y0, y1 = int(rows[:, 0].min()), int(rows[:, 1].max())
        x0, x1 = int(cols[:, 0].min()), int(cols[:, 1].max())
        return (z0, z1), (y0, y1), (x0, x1)

    def within(self, box) -> PlaneBoxes:
        """The same planes seen from ``box`` (its corner is voxel 0)."""
        (z0, z1), (y0, y1), (x0, x1) = box
        rows = np.clip(self.rows[z0:z1] - y0, 0, y1 - y0)
        cols = np.clip(self.cols[z0:z1] - x0, 0, x1 - x0)
        return PlaneBoxes(rows, cols, (y1 - y0, x1 - x0))

    @property
    def is_full(self) -> bool:
        h, w = self.plane
        return bool((self.rows == [0, h]).all() and (self.cols == [0, w]).all())

    def needed(self, shift: int, reach: int, start: int, stop: int, plane) -> tuple | None:
        """The in-plane box ((y0, y1), (x0, x1)) of planes [start, stop) of a layer's grid (plane
        size ``plane``) that outputs depend on, or None when none does. That grid's voxel i lies
        over output voxel i - ``shift``; outputs depend on its voxels up to ``reach`` away."""
        depth = len(self.rows)
        lo, hi = max(start - shift - reach, 0), min(stop - shift + reach, depth)
        if hi <= lo:
            return None
        y0, y1 = int(self.rows[lo:hi, 0].min()), int(self.rows[lo:hi, 1].max())
        x0, x1 = int(self.cols[lo:hi, 0].min()), int(self.cols[lo:hi, 1].max())
        if y1 <= y0 or x1 <= x0:
            return None
        grow = shift - reach, shift + reach
        rows = (max(y0 + grow[0], 0), min(y1 + grow[1], int(plane[0])))
        cols = (max(x0 + grow[0], 0), min(x1 + grow[1], int(plane[1])))
        return None if rows[1] <= rows[0] or cols[1] <= cols[0] else (rows, cols)

    def mask(self, start, size) -> np.ndarray:
        """Which voxels of the block at ``start`` (z, y, x) of size ``size`` are output."""
        (z, y, x), (nz, ny, nx) = start, size
        ys, xs = np.arange(y, y + ny), np.arange(x, x + nx)
        rows, cols = self.rows[z : z + nz], self.cols[z : z + nz]
        in_rows = (ys >= rows[:, :1]) & (ys < rows[:, 1:])
        in_cols = (xs >= cols[:, :1]) & (xs < cols[:, 1:])
        return in_rows[:, :, None] & in_cols[:, None, :]
