"""Arrays bigger than the memory budget allows: kept in unlinked temporary files, pages handed back.

A scratch array is a ``numpy`` view of a shared mapping of a temporary file that is unlinked at
once (nothing is left behind, whatever happens to the process). What is written to it lives in the
file's pages; :func:`release` hands the process's mapped pages back to the system after each slab,
so resident memory stays at the slab being worked on while the data stays reachable (the system
keeps it in its page cache or on disk). Used for the outputs of a prediction (labels, probabilities,
attention, derived maps) when they would not fit the memory budget, and for writing them to NIfTI.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator

import numpy as np

PLANES = 8  # planes per slab when scratch arrays are filled or read slab by slab
BIG_ARRAY_BYTES = 256 * 2**20  # bigger arrays are derived and written a slab at a time


def scratch_array(shape, dtype, fill=None, folder: str | None = None) -> np.ndarray:
    """A zero-filled (or ``fill``-filled) array backed by an unlinked temporary file in ``folder``."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    fd, path = tempfile.mkstemp(prefix="napari-autofocus-scratch-", dir=folder)
    try:
        os.unlink(path)  # the mapping keeps the file alive; nothing remains after the process
        os.ftruncate(fd, nbytes)
        buffer = mmap.mmap(fd, nbytes)
    finally:
        os.close(fd)
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    if fill is not None and fill != 0:
        for index in slabs(shape[-3] if len(shape) >= 3 else shape[0]):
            array[(Ellipsis, index, slice(None), slice(None)) if len(shape) >= 3 else index] = fill
            release(array)
    return array


def _mapping(array) -> mmap.mmap | None:
    base = array
    while base is not None:
        if isinstance(base, mmap.mmap):
            return base
        base = (
            getattr(base, "base", getattr(base, "obj", None))
            if not isinstance(base, memoryview)
            else base.obj
        )
    return None


def is_scratch(array) -> bool:
    return isinstance(array, np.ndarray) and _mapping(array) is not None


def release(*arrays) -> None:
    """Hand the mapped pages of scratch arrays back to the system (their data stays in the file)."""
    for array in arrays:
        buffer = _mapping(array) if isinstance(array, np.ndarray) else None
        if buffer is not None and hasattr(mmap, "MADV_DONTNEED"):
            buffer.madvise(mmap.MADV_DONTNEED)


def slabs(depth: int, planes: int = PLANES) -> Iterator[slice]:
    """Slices of ``planes`` planes along the first spatial axis."""
    for z in range(0, depth, planes):
        yield slice(z, min(z + planes, depth))
