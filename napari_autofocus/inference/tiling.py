"""Tile plans for networks with valid convolutions: output tiles that cover a volume exactly.

A valid-convolution network maps an input tile of ``T + 2m`` voxels to ``T`` output voxels (``m``
is its margin). Generic sliding-window helpers assume output size == input size and silently
rescale; here the geometry is explicit. The volume is padded by ``m`` on every side (and at the
end where a tile would run past it), output tiles are placed without overlap, and tile ``[p, p+T)``
of the output reads input ``[p, p+T+2m)`` of the padded volume, so output voxel ``v`` is always
predicted from input centred on ``v``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    start: tuple[int, int, int]  # first output voxel, in volume coordinates
    size: tuple[int, int, int]  # output voxels per axis

    @property
    def output_slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(s, s + n) for s, n in zip(self.start, self.size, strict=True))


@dataclass(frozen=True)
class TilePlan:
    """Tiles over a padded volume; ``padded_shape`` = volume rounded up to whole tiles + 2*margin."""

    shape: tuple[int, int, int]
    margin: int
    tile_size: tuple[int, int, int]
    tiles: tuple[Tile, ...]

    @property
    def covered_shape(self) -> tuple[int, int, int]:
        """Output extent the tiles cover (>= shape; the excess is cropped)."""
        return tuple(max(t.start[a] + t.size[a] for t in self.tiles) for a in range(3))

    @property
    def input_tile_size(self) -> tuple[int, int, int]:
        return tuple(t + 2 * self.margin for t in self.tile_size)

    def input_slices(self, tile: Tile) -> tuple[slice, slice, slice]:
        """Slices of the padded input that produce ``tile``'s output."""
        return tuple(slice(s, s + n + 2 * self.margin) for s, n in zip(tile.start, tile.size, strict=True))


def valid_output_size(size: int, margin: int, multiple: int) -> int:
    """Smallest output size >= ``size`` whose input size (size + 2*margin) is divisible by ``multiple``."""
    while (size + 2 * margin) % multiple:
        size += 1
    return size


def plan_tiles(
    shape: tuple[int, int, int],
    margin: int,
    max_tile: int | tuple[int, int, int],
    multiple: int = 1,
    even: bool = True,
) -> TilePlan:
    """Cover ``shape`` with output tiles of at most ``max_tile`` voxels per axis.

    ``even=True`` (the fast default) splits each axis into the fewest tiles and makes them equal,
    so little is computed beyond the volume; ``even=False`` uses ``max_tile`` as is with a stride
    of ``max_tile`` (the reference's fixed 47^3 tiling), padding the end of the volume.
    """
    if isinstance(max_tile, int):
        max_tile = (max_tile,) * 3
    sizes, starts = [], []
    for n, cap in zip(shape, max_tile, strict=True):
        cap = max(1, min(cap, n)) if even else max(1, cap)
        count = math.ceil(n / cap)
        size = math.ceil(n / count) if even else cap
        size = valid_output_size(size, margin, multiple)
        sizes.append(size)
        starts.append([i * size for i in range(count)])
    tiles = tuple(Tile(start=tuple(s), size=tuple(sizes)) for s in itertools.product(*starts))
    return TilePlan(shape=tuple(shape), margin=margin, tile_size=tuple(sizes), tiles=tiles)
