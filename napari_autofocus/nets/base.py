"""What every network shares: the chain of convolutions its geometry is computed from.

The paper's networks (:mod:`.networks`) and DeepMedic (:mod:`.deepmedic`) both build on
:class:`SegmentationNet`; it lives here so that neither module imports the other's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from torch import nn

from napari_autofocus.analysis.attention_maths import receptive_field

from .autofocus import AutofocusConv
from .registry import NetworkConfigError


class ChainEntry(NamedTuple):
    """One convolution on the path to the output.

    ``rates``: one element for a plain conv, the K dilations of an autofocus conv, or all rates of
    a set of parallel same-padded ASPP convs (all always contribute, so the largest counts)."""

    name: str  # dotted module name
    kernel: int
    rates: tuple[int, ...]
    shrink: int  # voxels removed per side
    autofocus: bool


def reference_init(model: nn.Module) -> None:
    """Conv kernels ~ N(0, 0.01^2), BN gamma 1 / beta 0; biases keep PyTorch's default (reference)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | AutofocusConv):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegmentationNet(nn.Module):
    """Common geometry API. Subclasses fill ``_chain`` with :class:`ChainEntry` records."""

    input_multiple: int = 1

    def __init__(self, *, arch: str, in_channels: int, num_classes: int, options: dict) -> None:
        super().__init__()
        self.arch = arch
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.options = options
        self._chain: list[ChainEntry] = []

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def margin(self) -> int:
        """Voxels removed per side: output voxel i sits over input voxel i + margin."""
        return sum(entry.shrink for entry in self._chain)

    @property
    def min_input_size(self) -> int:
        return 2 * self.margin + 1

    def output_size(self, size: int) -> int:
        """Output length of one axis for an input of ``size`` voxels (ValueError if unusable)."""
        if size < self.min_input_size or size % self.input_multiple:
            raise NetworkConfigError(
                f"{self.arch}: input size {size} is unusable; it needs to be >= {self.min_input_size}"
                + (f" and divisible by {self.input_multiple}" if self.input_multiple > 1 else "")
            )
        return size - 2 * self.margin

    # -- receptive field ------------------------------------------------------------------------
    def _rf(self, pick) -> int:
        return 1 + sum((e.kernel - 1) * (pick(e.rates) if e.autofocus else max(e.rates)) for e in self._chain)

    @property
    def receptive_field(self) -> int:
        """Largest receptive field (voxels per axis): every autofocus layer at its largest rate."""
        return self._rf(max)

    @property
    def receptive_field_min(self) -> int:
        """Smallest receptive field: every autofocus layer at its smallest rate."""
        return self._rf(min)

    def effective_receptive_field(self, rates: Sequence[float]) -> float:
        """RF = 1 + sum (k-1) * rate over all convs, with ``rates[i]`` the (attention-weighted)
        effective rate of autofocus layer i in forward order."""
        af = [e for e in self._chain if e.autofocus]
        if len(rates) != len(af):
            raise ValueError(f"{self.arch} has {len(af)} autofocus layers, got {len(rates)} rates")
        return receptive_field(
            self.receptive_field_min, rates, [min(e.rates) for e in af], [e.kernel for e in af]
        )

    def autofocus_geometry(self) -> list[dict]:
        """Where each autofocus layer sits, for placing attention maps on the input grid.

        ``offset``: per-side offset (input voxels) of the layer's output/attention grid relative to
        the network input. ``rf_in``: receptive field at the layer's input, with earlier autofocus
        layers at their smallest rate (add (k-1)*(rate-r_min) per earlier layer for others).
        """
        out, offset, rf, n = [], 0, 1, 0
        for name, k, rates, shrink, af in self._chain:  # ChainEntry fields, in order
            rf_in = rf
            offset += shrink
            rf += (k - 1) * (min(rates) if af else max(rates))
            if af:
                n += 1
                out.append(
                    {
                        "name": f"AF{n}",
                        "module": name,
                        "offset": offset,
                        "rates": list(rates),
                        "kernel_size": k,
                        "rf_in": rf_in,
                    }
                )
        return out
