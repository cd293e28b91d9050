"""Where the streamed activations live between layers: in memory (pages handed back as slabs pass),
in an unlinked temporary file read back slab by slab, or, for the input, read from the scan itself
(:class:`CropStore`), so no full copy of a big scan is made."""

from __future__ import annotations

import ctypes
import mmap
import sys
import tempfile

import numpy as np
import torch


def own_strides(array: np.ndarray) -> np.ndarray:
    """A writable float32 C-ordered array torch can wrap. ``np.ascontiguousarray`` keeps the negative
    strides of a flipped view when an axis has one voxel (numpy calls it contiguous): copied then."""
    out = np.ascontiguousarray(array, dtype=np.float32)
    if any(s < 0 for s in out.strides) or not out.flags.writeable:
        out = out.copy()
    return out


class MemoryStore:
    """A full activation (1, C, D, H, W) held as one tensor on the compute device."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data
        self.scratch: torch.Tensor | None = None

    @classmethod
    def empty(cls, channels, extent, device, memory_format) -> MemoryStore:
        # not zeroed: pages become resident only as slabs are written (voxels that no output needs
        # may hold stale values, which only other such voxels ever read)
        return cls(torch.empty((1, channels, *extent), device=device, memory_format=memory_format))

    def write(self, start: int, slab: torch.Tensor, rows=None, cols=None) -> None:
        """A slab's output at plane ``start``: whole planes, or the in-plane box ``rows`` x ``cols``."""
        (y0, _), (x0, _) = rows or (0, 0), cols or (0, 0)
        n, h, w = slab.shape[2:]
        self.data[:, :, start : start + n, y0 : y0 + h, x0 : x0 + w].copy_(slab)

    @property
    def can_release(self) -> bool:
        return _release_pages is not None and self.data.device.type == "cpu" and plane_major(self.data)

    def release(self, below: int) -> None:
        """Give the memory of planes [0, below) back to the system: no later step reads them."""
        if self.can_release and below > 0:
            plane = self.data[0, :, 0].numel() * self.data.element_size()
            _release_pages(self.data.data_ptr(), min(below, self.data.shape[2]) * plane)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Planes [lo, hi): a view inside the volume; across its border, zeros beyond it in a
        buffer that is reused (valid until the next read of this store)."""
        depth = self.data.shape[2]
        if lo >= 0 and hi <= depth:
            return self.data[:, :, lo:hi]
        if self.scratch is None or self.scratch.shape[2] < hi - lo:
            shape = (*self.data.shape[:2], hi - lo, *self.data.shape[3:])
            self.scratch = torch.empty(shape, dtype=self.data.dtype, device=self.data.device)
            self.scratch = self.scratch.contiguous(memory_format=format_of(self.data))
        out = self.scratch[:, :, : hi - lo]
        a, b = min(max(lo, 0), hi), max(min(hi, depth), lo)
        out[:, :, : a - lo].zero_()
        out[:, :, max(b, a) - lo :].zero_()
        if b > a:
            out[:, :, a - lo : b - lo].copy_(self.data[:, :, a:b])
        return out


class CropStore:
    """The network's input read straight from the (C, D, H, W) scan: the box grown by the margin,
    ``pad_value`` beyond the scan's border, a slab of planes at a time. No full copy of the scan
    is made (the scan itself belongs to the caller)."""

    PLANES = 8  # planes copied at once from the scan

    def __init__(self, image: np.ndarray, box, margin: int, pad_value: float, device, memory_format) -> None:
        self.image, self.box, self.margin, self.pad = image, box, margin, float(pad_value)
        self.extent = tuple(b - a + 2 * margin for a, b in box)
        self.device, self.memory_format = torch.device(device), memory_format
        self.can_release = False

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Planes [lo, hi) of the padded crop: the scan, ``pad_value`` where the crop lies beyond the
        scan, zeros beyond the crop's own planes."""
        out = torch.empty((1, self.image.shape[0], hi - lo, *self.extent[1:]), dtype=torch.float32,
                          device=self.device, memory_format=self.memory_format)  # fmt: skip
        (z0, _), (y0, y1), (x0, x1) = self.box
        m = self.margin
        depth = self.extent[0]
        a, b = max(lo, 0), min(hi, depth)  # planes of the padded crop this read covers
        out.zero_()  # beyond the crop's planes: zeros, as for any activation read past its border
        if b > a:
            out[:, :, a - lo : b - lo].fill_(self.pad)  # inside it but beyond the scan: the padding
        src = [(z0 - m + a, z0 - m + b), (y0 - m, y1 + m), (x0 - m, x1 + m)]
        limits = self.image.shape[1:]
        clipped = [(max(u, 0), min(v, n)) for (u, v), n in zip(src, limits, strict=True)]
        if b > a and all(v > u for u, v in clipped):
            (za, zb), (ya, yb), (xa, xb) = clipped
            dy, dx = ya - (y0 - m), xa - (x0 - m)
            for z in range(za, zb, self.PLANES):  # a few planes at a time: no temporary of the read
                z_end = min(z + self.PLANES, zb)
                chunk = own_strides(self.image[:, z:z_end, ya:yb, xa:xb])
                dz = z - (z0 - m) - lo
                target = out[0, :, dz : dz + z_end - z, dy : dy + yb - ya, dx : dx + xb - xa]
                target.copy_(torch.from_numpy(chunk))
        return out

    def whole(self) -> torch.Tensor:
        """The whole padded crop as one tensor: the network's input when a copy fits the budget."""
        return self.read(0, self.extent[0])

    def release(self, below: int) -> None:
        """The scan is the caller's: nothing to give back."""


class FileStore:
    """A full activation kept plane by plane (D, H, W, C float32) in a temporary file.

    Slabs are read in increasing order and overlap by their halos, so one buffer is kept per
    store: planes still wanted are moved to its front and only new planes come from the file.
    (Reading every halo again, into a fresh buffer each time, took a fifth of a BraTS-size run.)
    """

    def __init__(self, folder: str, channels: int, extent, device) -> None:
        self.shape = (extent[0], extent[1], extent[2], channels)
        self.plane = extent[1] * extent[2] * channels
        self.device = device
        self.file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed by _release()
        self.buffer: np.ndarray | None = None
        self.held = (0, 0)  # planes [lo, hi) at the front of the buffer

    def write(self, start: int, slab: torch.Tensor, rows=None, cols=None) -> None:
        """A slab's output at plane ``start``: whole planes, or the in-plane box ``rows`` x ``cols``
        (written as whole planes, zeros around it: nothing reads outside the box)."""
        planes = slab[0].permute(1, 2, 3, 0).float().contiguous().cpu().numpy()
        if planes.shape[1:3] != self.shape[1:3]:
            (y0, y1), (x0, x1) = rows, cols
            whole = np.zeros((planes.shape[0], *self.shape[1:]), np.float32)
            whole[:, y0:y1, x0:x1] = planes
            planes = whole
        self.file.seek(start * self.plane * 4)
        self.file.write(memoryview(planes).cast("B"))

    def read(self, lo: int, hi: int) -> torch.Tensor:
        """Planes [lo, hi), zeros beyond the volume; valid until the next read of this store."""
        if self.buffer is None or self.buffer.shape[0] < hi - lo:
            self.buffer, self.held = np.empty((hi - lo, *self.shape[1:]), np.float32), (0, 0)
        buffer = self.buffer
        keep_lo, keep_hi = max(lo, self.held[0]), min(hi, self.held[1])
        if keep_hi > keep_lo and lo != self.held[0]:
            planes = range(keep_lo, keep_hi)  # plane by plane, in the order that is safe in place
            for plane in planes if lo > self.held[0] else reversed(planes):
                buffer[plane - lo] = buffer[plane - self.held[0]]
        elif keep_hi <= keep_lo:
            keep_lo = keep_hi = lo
        for a, b in ((lo, keep_lo), (keep_hi, hi)):
            self._load(buffer, lo, a, b)
        self.held = (lo, hi)
        return torch.from_numpy(buffer[: hi - lo]).permute(3, 0, 1, 2)[None].to(self.device)

    def _load(self, buffer: np.ndarray, lo: int, a: int, b: int) -> None:
        """Planes [a, b) into the buffer (which starts at plane ``lo``): from the file, or zeros."""
        if b <= a:
            return
        inside_a, inside_b = min(max(a, 0), self.shape[0]), max(min(b, self.shape[0]), 0)
        buffer[a - lo : max(inside_a, a) - lo] = 0
        buffer[min(max(inside_b, a), b) - lo : b - lo] = 0
        if inside_b > inside_a:
            self.file.seek(inside_a * self.plane * 4)
            self.file.readinto(memoryview(buffer[inside_a - lo : inside_b - lo]).cast("B"))

    def release(self, below: int) -> None:
        """Nothing to give back: the file's pages belong to the system's cache."""

    def close(self) -> None:
        self.file.close()
        self.buffer = None


def in_plane(x: torch.Tensor, rows, cols) -> torch.Tensor:
    """Rows [y0, y1) and columns [x0, x1) of every plane of a (1, C, D, H, W) slab, zeros beyond
    its planes' border (a view when the box lies inside)."""
    (y0, y1), (x0, x1) = rows, cols
    h, w = x.shape[3:]
    if y0 >= 0 and x0 >= 0 and y1 <= h and x1 <= w:
        return x[:, :, :, y0:y1, x0:x1]
    out = torch.zeros((*x.shape[:3], y1 - y0, x1 - x0), dtype=x.dtype, device=x.device)
    out = out.contiguous(memory_format=format_of(x))
    a, b, c, d = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if b > a and d > c:
        out[:, :, :, a - y0 : b - y0, c - x0 : d - x0].copy_(x[:, :, :, a:b, c:d])
    return out


def plane_major(t: torch.Tensor) -> bool:
    """Whether every depth plane of a (1, C, D, H, W) tensor is one contiguous block, in order."""
    return t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)


def _page_releaser():
    """madvise(MADV_DONTNEED) on whole pages, where the C library has it (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.PAGESIZE

    def release(address: int, length: int) -> None:
        first = -(-address // page) * page  # whole pages inside [address, address + length) only
        last = (address + length) // page * page
        if last > first:
            madvise(first, last - first, 4)  # MADV_DONTNEED: freed now, zero pages if touched again

    return release


_release_pages = _page_releaser()


def format_of(t: torch.Tensor):
    return (
        torch.channels_last_3d
        if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)
        else (torch.contiguous_format)
    )


# -- running the steps ----------------------------------------------------------------------------
