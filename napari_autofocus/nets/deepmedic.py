"""DM: the two-pathway DeepMedic baseline of the paper's Table 3 (not in the reference code).

Its layout was inferred from the published parameter count (662,555 with 4 inputs / 5 classes):
two identical pathways of eight valid 3^3 convs (bias, BN, ReLU), DeepMedic's parameter-free
residual connections, and three 1^3 convs without BN on the concatenated pathways.

Geometry, for an input of S voxels per axis (S divisible by 3, S >= 51):

* normal pathway: the centre crop of S-32 voxels -> 8 valid convs -> S-48;
* low-resolution pathway: 3x3x3 average pooling, stride 3 -> S/3 -> 8 valid convs -> S/3-16 ->
  nearest upsampling x3 -> S-48, whose voxel centres coincide with the normal pathway's;
* output S-48, i.e. a margin of 24 voxels per side; receptive field 17 (normal) and
  3 + 16*3 = 51 (low resolution), so 51 for the network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegmentationNet, reference_init
from .blocks import centre_crop
from .registry import NetworkConfigError

POOL = 3  # the low-resolution pathway's average pooling (kernel = stride)

# (input of conv i is added to the output of conv j), 0-based: conv3->conv4, conv5->conv6, conv7->conv8.
_RESIDUALS = {3: 2, 5: 4, 7: 6}


def _pad_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Zero-pad the channel axis up to ``channels`` (DeepMedic's parameter-free residual)."""
    extra = channels - x.shape[1]
    if extra == 0:
        return x
    zeros = x.new_zeros((x.shape[0], extra) + tuple(x.shape[2:]))
    return torch.cat([x, zeros], dim=1)


class Pathway(nn.Module):
    """Eight valid 3^3 convs with bias, BN and ReLU; residuals added before the ReLU."""

    def __init__(self, in_channels: int, channels) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        self.convs = nn.ModuleList(nn.Conv3d(a, b, 3) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.norms = nn.ModuleList(nn.BatchNorm3d(b) for b in widths[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = {}
        for i, (conv, bn) in enumerate(zip(self.convs, self.norms, strict=True)):
            if i in _RESIDUALS.values():
                saved[i] = x
            y = bn(conv(x))
            if i in _RESIDUALS:
                y = y + _pad_channels(centre_crop(saved.pop(_RESIDUALS[i]), 2), y.shape[1])
            x = F.relu(y)
        return x


class DeepMedic(SegmentationNet):
    """Two-pathway DeepMedic (normal + 1/3 resolution); see the module docstring for geometry."""

    input_multiple = POOL

    def __init__(self, *, in_channels: int, num_classes: int, options: dict) -> None:
        super().__init__(arch="DM", in_channels=in_channels, num_classes=num_classes, options=options)
        channels = list(options["channels"])
        fc1, fc2 = options["fc_channels"]
        if any(c > channels[-1] for c in channels[2:]) or channels[2:] != sorted(channels[2:]):
            raise NetworkConfigError("DM residuals need non-decreasing channels from conv3 on")
        self.normal = Pathway(in_channels, channels)
        self.lowres = Pathway(in_channels, channels)
        self.fc1 = nn.Conv3d(2 * channels[-1], fc1, 1)
        self.fc2 = nn.Conv3d(fc1, fc2, 1)
        self.classifier = nn.Conv3d(fc2, num_classes, 1)
        reference_init(self)

    @property
    def _pathway_shrink(self) -> int:
        """Voxels one pathway's valid convs remove per side, on its own grid (8 convs of 3^3: 8)."""
        return sum((conv.kernel_size[0] - 1) // 2 for conv in self.normal.convs)

    @property
    def _crop(self) -> int:
        """The normal pathway's centre crop: its output then matches the upsampled low-res one."""
        return self.margin - self._pathway_shrink

    @property
    def margin(self) -> int:
        """The low-resolution pathway's shrink on the input grid (24): both pathways end there."""
        return POOL * self._pathway_shrink

    @property
    def min_input_size(self) -> int:
        return self.receptive_field

    @property
    def receptive_field(self) -> int:
        """The low-resolution pathway's: one pooled voxel spans POOL, each conv adds (k - 1) * POOL
        (3 + 16 * 3 = 51); the normal pathway's is smaller (17)."""
        return POOL * (1 + 2 * self._pathway_shrink)

    @property
    def receptive_field_min(self) -> int:
        return self.receptive_field

    def autofocus_geometry(self) -> list[dict]:
        return []

    def effective_receptive_field(self, rates) -> float:
        if len(rates):
            raise ValueError("DM has no autofocus layers")
        return float(self.receptive_field)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for size in x.shape[2:]:
            self.output_size(int(size))  # raises with a clear message for unusable sizes
        normal = self.normal(centre_crop(x, self._crop))
        low = self.lowres(F.avg_pool3d(x, POOL, POOL))
        low = F.interpolate(low, scale_factor=POOL, mode="nearest")
        y = torch.cat([normal, low], dim=1)
        return self.classifier(F.relu(self.fc2(F.relu(self.fc1(y)))))
