"""The engine's output arrays: labels, probabilities, logits and attention of the computed box,
written slab by slab or tile by tile while the network runs and placed on the full input grid at
the end (optionally in unlinked scratch files, so big scans fit the memory budget)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from napari_autofocus.inference.regions import PlaneBoxes
from napari_autofocus.io.scratch import release, scratch_array, slabs


@dataclass
class Outputs:
    """The result arrays of the computed box, placed on the full input grid at the end (so the full
    arrays never coexist with the activations); the box is all that is written while running."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    maps: dict[str, np.ndarray]
    rates: dict[str, tuple[int, ...]]
    computed: np.ndarray
    box: tuple | None
    logits: np.ndarray | None = None

    scratch: bool = False  # the arrays live in unlinked temporary files (see napari_autofocus.io.scratch)
    folder: str | None = None
    planes: PlaneBoxes | None = None  # only these voxels of the box are output (None: all of it)

    @staticmethod
    def bytes_for(model, voxels: int, probabilities: bool, wanted: list[str], dtype, logits=False) -> int:
        """What the output arrays of ``voxels`` voxels take."""
        geometry = {g["name"]: g for g in model.autofocus_geometry()} if wanted else {}
        per_voxel = 2 + 4 * model.num_classes * (int(probabilities) + int(logits))
        per_voxel += sum(len(geometry[n]["rates"]) * np.dtype(dtype).itemsize for n in wanted)
        return per_voxel * voxels

    @classmethod
    def allocate(
        cls,
        model,
        box,
        probabilities: bool,
        wanted: list[str],
        dtype,
        logits=False,
        scratch=False,
        folder=None,
        planes=None,
    ) -> Outputs:
        geometry = {g["name"]: g for g in model.autofocus_geometry()} if wanted else {}
        size = tuple(b - a for a, b in box) if box is not None else (0, 0, 0)

        def array(shape, dtype, fill):
            return scratch_array(shape, dtype, fill, folder) if scratch else np.full(shape, fill, dtype=dtype)

        probs = None
        if probabilities:
            probs = array((model.num_classes, *size), np.float32, 0.0)
            probs[0] = 1.0
            release(probs)
        return cls(
            labels=array(size, np.uint8 if model.num_classes <= 256 else np.int16, 0),
            probabilities=probs,
            maps={n: array((len(geometry[n]["rates"]), *size), dtype, np.nan) for n in wanted},
            rates={n: tuple(geometry[n]["rates"]) for n in wanted},
            computed=array(size, bool, False),
            box=box,
            logits=array((model.num_classes, *size), np.float32, np.nan) if logits else None,
            scratch=scratch,
            folder=folder,
            planes=None if planes is None or planes.is_full else planes,
        )

    def arrays(self) -> list[np.ndarray]:
        out = [self.labels, self.computed, *self.maps.values()]
        return out + [a for a in (self.probabilities, self.logits) if a is not None]

    @property
    def nbytes(self) -> int:
        """What the outputs hold in memory (scratch arrays hold only the slab being written)."""
        return 0 if self.scratch else sum(a.nbytes for a in self.arrays())

    def release(self) -> None:
        if self.scratch:
            release(*self.arrays())

    def on_grid(self, shape) -> Outputs:
        """The same outputs on the whole (D, H, W) grid: background and NaN outside the box."""
        if self.box is not None and tuple(b - a for a, b in self.box) == tuple(shape):
            return self
        inside = tuple(slice(a, b) for a, b in self.box) if self.box is not None else None

        def place(array, fill):
            if not self.scratch:
                out = np.full((*array.shape[:-3], *shape), fill, dtype=array.dtype)
                if inside is not None:
                    out[(..., *inside)] = array
                return out
            out = scratch_array((*array.shape[:-3], *shape), array.dtype, fill, self.folder)
            if inside is not None:  # slab by slab, handing pages back as it goes
                z0 = inside[0].start
                for planes in slabs(array.shape[-3]):
                    target = slice(z0 + planes.start, z0 + planes.stop)
                    out[(..., target, inside[1], inside[2])] = array[..., planes, :, :]
                    release(out, array)
            return out

        computed = place(self.computed, False)
        probs = None
        if self.probabilities is not None:
            probs = place(self.probabilities, 0.0)
            for planes in slabs(shape[0]):
                probs[0, planes][~computed[planes]] = 1.0  # certain background where nothing was computed
                release(probs, computed)
        return Outputs(
            labels=place(self.labels, 0),
            probabilities=probs,
            maps={n: place(m, np.nan) for n, m in self.maps.items()},
            rates=self.rates,
            computed=computed,
            box=self.box,
            logits=None if self.logits is None else place(self.logits, np.nan),
            scratch=self.scratch,
            folder=self.folder,
        )

    def write_logits(self, start: tuple[int, int, int], logits: torch.Tensor) -> None:
        """Labels (and probabilities) of an output block whose first voxel is ``start`` in the box."""
        logits = logits.float()[0]
        region = self._region(start, logits.shape[1:])
        if region is None:
            return
        index, inner = region
        keep = self._kept(index)
        labels = logits.argmax(0).to(torch.uint8 if self.labels.dtype == np.uint8 else torch.int16)
        np.copyto(self.labels[index], labels[inner].cpu().numpy(), where=keep)
        if self.probabilities is not None:
            probs = torch.softmax(logits, 0)[(slice(None), *inner)]
            np.copyto(self.probabilities[(slice(None), *index)], probs.cpu().numpy(), where=keep)
        if self.logits is not None:
            np.copyto(
                self.logits[(slice(None), *index)], logits[(slice(None), *inner)].cpu().numpy(), where=keep
            )
        np.copyto(self.computed[index], True, where=keep)

    def write_layer_attention(self, name: str, grid_offset: int, margin: int, start, a: torch.Tensor) -> None:
        """Attention on its layer's grid, which sits ``grid_offset`` voxels per side into the network
        input (the output grid: ``margin``); ``start`` is its first voxel on that grid."""
        shift = margin - grid_offset  # that grid's voxel i is output voxel i - shift
        self.write_attention(name, tuple(s - shift for s in start), a)

    def write_attention(self, name: str, start: tuple[int, int, int], a: torch.Tensor) -> None:
        """An attention block (1, K, ...) whose first voxel is ``start`` in box coordinates."""
        region = self._region(start, a.shape[2:])
        if region is None:
            return
        index, inner = region
        block = a[0].float()[(slice(None), *inner)].cpu().numpy()
        np.copyto(self.maps[name][(slice(None), *index)], block, where=self._kept(index), casting="unsafe")

    def _kept(self, index) -> np.ndarray | bool:
        """Which voxels of a box region are output: all, or the foreground's box in each plane."""
        if self.planes is None:
            return True
        return self.planes.mask(tuple(s.start for s in index), tuple(s.stop - s.start for s in index))

    def _region(self, start, size):
        """(box index, block index) of the part of a block at ``start`` (box coords) inside the box."""
        index, inner = [], []
        for s, n, extent in zip(start, size, self.labels.shape, strict=True):
            a, b = max(s, 0), min(s + n, extent)
            if b <= a:
                return None
            index.append(slice(a, b))
            inner.append(slice(a - s, b - s))
        return tuple(index), tuple(inner)
