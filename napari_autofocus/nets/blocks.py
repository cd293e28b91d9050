"""Residual building blocks shared by BASIC, AFN-n and ASPP networks.

The layout follows the authors' reference code (post-activation ResNet block of two dilated 3^3
convs); keeping their sub-module names (conv1, bn1, conv2, bn2, downsample) makes reference
checkpoints map onto ours with a short, explicit key table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .autofocus import AutofocusConv


def per_side_shrink(conv: nn.Module) -> int:
    """Voxels a conv removes per side (0 for same padding). Works for Conv3d and AutofocusConv."""
    if isinstance(conv, AutofocusConv):
        return conv.shrink
    k, d, p = conv.kernel_size[0], conv.dilation[0], conv.padding[0]
    return d * (k - 1) // 2 - p


def centre_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    """Remove ``crop`` voxels from each side of every spatial axis."""
    if crop == 0:
        return x
    return x[(slice(None), slice(None)) + (slice(crop, -crop),) * (x.dim() - 2)]


def make_conv(
    in_ch: int,
    out_ch: int,
    dilation: int,
    padding: str,
    autofocus: bool,
    af_options: dict,
) -> nn.Module:
    """A 3^3 conv (with bias, reference init) or its autofocus replacement."""
    if autofocus:
        return AutofocusConv(in_ch, out_ch, 3, padding=padding, **af_options)
    conv = nn.Conv3d(in_ch, out_ch, 3, dilation=dilation, padding=dilation if padding == "same" else 0)
    nn.init.normal_(conv.weight, 0.0, 0.01)
    return conv


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN (+ cropped, possibly projected input) - ReLU.

    Either conv may be an AutofocusConv; its per-branch norms then replace the block's BN (which
    becomes an Identity with no parameters), exactly as in the reference ``Autofocus`` blocks.
    The residual is the block input centre-cropped by what the two convs removed, projected by a
    1^3 conv + BN when channel counts differ.
    """

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        dilation: int = 2,
        padding: str = "valid",
        autofocus: tuple[bool, bool] = (False, False),
        af_options: dict | None = None,
    ) -> None:
        super().__init__()
        af_options = af_options or {}
        self.conv1 = make_conv(in_ch, mid_ch, dilation, padding, autofocus[0], af_options)
        self.bn1 = nn.Identity() if autofocus[0] else nn.BatchNorm3d(mid_ch)
        self.conv2 = make_conv(mid_ch, out_ch, dilation, padding, autofocus[1], af_options)
        self.bn2 = nn.Identity() if autofocus[1] else nn.BatchNorm3d(out_ch)
        self.downsample = None
        if in_ch != out_ch:
            proj = nn.Conv3d(in_ch, out_ch, 1)
            nn.init.normal_(proj.weight, 0.0, 0.01)
            self.downsample = nn.Sequential(proj, nn.BatchNorm3d(out_ch))
        self.crop = per_side_shrink(self.conv1) + per_side_shrink(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = centre_crop(x, self.crop)
        if self.downsample is not None:
            residual = self.downsample(residual)
        return F.relu(out + residual)

    def convs(self) -> list[tuple[str, nn.Module]]:
        return [("conv1", self.conv1), ("conv2", self.conv2)]
