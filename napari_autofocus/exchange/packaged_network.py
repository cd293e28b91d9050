"""The network as an exchange package runs it: whole scans or tiles, same labels either way.

bioimage.io tools and MONAI give a model one block of the scan at a time, padded beyond the scan's
border with a constant. The package declares :data:`OUTSIDE` (-1e30, far below any normalised
intensity; the spec allows no NaN there) as that constant, so the network can tell where the scan
ends: :class:`BoxedPrediction` cuts the block to the voxels that hold data, pads them with the
card's outside value by the network's valid-convolution margin (what our engine does for a whole
scan) and runs the network there. A block whose halo covers the receptive field's half-width
therefore gives, in its inner part, exactly what one pass over the whole scan gives, at the scan's
border included. Outputs have the input's size: label 0, background probability 1 and attention NaN
where the block holds no data.

This module is copied into every exported package (see ``architecture_source``): torch only here,
and no ``from __future__ import annotations`` (TorchScript reads the annotations).
"""

import torch
import torch.nn.functional as F
from torch import nn

from napari_autofocus.nets.autofocus import capture_attention
from napari_autofocus.nets.networks import build_network

OUTSIDE = -1e30  # the padding value that marks voxels beyond the scan
_OUTSIDE_BELOW = -1e29  # values at or below this, and NaN, count as outside


class NetworkOutputs(nn.Module):
    """Logits and every autofocus layer's attention on the output grid, as one (N, C + sum K, ...)
    tensor: one tensor out keeps the module traceable into TorchScript at any input size."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        margin = int(net.margin)
        self.crops = [(g["name"], margin - int(g["offset"])) for g in net.autofocus_geometry()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with capture_attention(self.net) as captured:
            logits = self.net(x)
        parts = [logits]
        for name, crop in self.crops:
            a = captured[name]
            if crop:
                d, h, w = a.shape[2:]
                a = a[:, :, crop : d - crop, crop : h - crop, crop : w - crop]
            parts.append(a.to(logits.dtype))
        return torch.cat(parts, dim=1)


class BoxedPrediction(nn.Module):
    """Labels, probabilities and attention on the input's grid from a block padded with
    :data:`OUTSIDE` (or NaN) beyond the scan. TorchScript-compatible: in the packages it wraps a
    traced :class:`NetworkOutputs`."""

    attention_sizes: list[int]  # K of each autofocus layer (none for BASIC): TorchScript needs the type

    def __init__(
        self,
        outputs: nn.Module,
        margin: int,
        input_multiple: int,
        pad_value: float,
        num_classes: int,
        attention_sizes: list[int],
    ) -> None:
        super().__init__()
        self.outputs = outputs
        self.margin = margin
        self.input_multiple = input_multiple
        self.pad_value = pad_value
        self.num_classes = num_classes
        self.attention_sizes = attention_sizes
        self.outside_below = _OUTSIDE_BELOW

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, C, D, H, W) -> [labels (N, 1, ...), probabilities (N, classes, ...), attention of
        AF1, AF2, ... (N, K, ...)], all of the input's spatial size."""
        per_item = [self._one(x[i : i + 1]) for i in range(x.shape[0])]
        return [torch.cat([item[k] for item in per_item], dim=0) for k in range(len(per_item[0]))]

    def _one(self, x: torch.Tensor) -> list[torch.Tensor]:
        size = x.shape[2:]
        labels = torch.zeros((1, 1, size[0], size[1], size[2]), dtype=x.dtype, device=x.device)
        probabilities = torch.zeros(
            (1, self.num_classes, size[0], size[1], size[2]), dtype=x.dtype, device=x.device
        )
        probabilities[:, 0] = 1.0
        attention = [
            torch.full((1, k, size[0], size[1], size[2]), float("nan"), dtype=x.dtype, device=x.device)
            for k in self.attention_sizes
        ]
        real = torch.isfinite(x) & (x > self.outside_below)
        data = real.any(dim=1)[0]  # voxels inside the scan: outside in every channel is outside
        if not bool(data.any()):
            return [labels] + [probabilities] + attention
        starts: list[int] = []
        stops: list[int] = []
        for along in (data.any(dim=2).any(dim=1), data.any(dim=2).any(dim=0), data.any(dim=1).any(dim=0)):
            hit = torch.nonzero(along).flatten()
            starts.append(int(hit[0]))
            stops.append(int(hit[-1]) + 1)
        box = x[:, :, starts[0] : stops[0], starts[1] : stops[1], starts[2] : stops[2]]
        box = torch.where(
            real[:, :, starts[0] : stops[0], starts[1] : stops[1], starts[2] : stops[2]],
            box,
            torch.full_like(box, self.pad_value),
        )
        pads: list[int] = []
        for axis in (2, 1, 0):  # F.pad lists the last axis first
            n = stops[axis] - starts[axis]
            extra = (-(n + 2 * self.margin)) % self.input_multiple
            pads += [self.margin, self.margin + extra]
        result = self.outputs(F.pad(box, pads, value=self.pad_value))
        n0, n1, n2 = stops[0] - starts[0], stops[1] - starts[1], stops[2] - starts[2]
        result = result[:, :, :n0, :n1, :n2]
        p = torch.softmax(result[:, : self.num_classes], dim=1)
        probabilities[:, :, starts[0] : stops[0], starts[1] : stops[1], starts[2] : stops[2]] = p
        labels[:, :, starts[0] : stops[0], starts[1] : stops[1], starts[2] : stops[2]] = torch.argmax(
            p, dim=1, keepdim=True
        ).to(x.dtype)
        first = self.num_classes
        for i, k in enumerate(self.attention_sizes):
            attention[i][:, :, starts[0] : stops[0], starts[1] : stops[1], starts[2] : stops[2]] = result[
                :, first : first + k
            ]
            first += k
        return [labels] + [probabilities] + attention


class PackagedNetwork(BoxedPrediction):
    """What a package's ``pytorch_state_dict`` entry builds: the network from the card's
    architecture fields, its state dict under ``outputs.net.``."""

    def __init__(
        self,
        arch: str,
        in_channels: int,
        num_classes: int,
        options: dict,
        pad_value: float = 0.0,
    ) -> None:
        net = build_network(arch, in_channels=in_channels, num_classes=num_classes, **options)
        sizes = [len(g["rates"]) for g in net.autofocus_geometry()]
        super().__init__(
            NetworkOutputs(net), int(net.margin), int(net.input_multiple), pad_value, num_classes, sizes
        )
