"""Depth-slab helpers for per-layer streaming inference: batch norm folding and halo convolutions.

A layer computed slab by slab along the first spatial axis reads its neighbouring planes from the
whole volume (its halo) instead of zero padding at the slab border; only the two in-plane axes are
padded by the layer itself. No module here keeps state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fold_batchnorm(
    weight: torch.Tensor, bias: torch.Tensor | None, norm: nn.Module | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of ``conv`` then eval-mode ``norm`` as one conv: one pass over the output
    instead of two, which matters at inference where elementwise passes are memory-bound."""
    if norm is None or isinstance(norm, nn.Identity):
        return weight, bias
    if norm.running_var is None:
        raise ValueError("a BatchNorm without running statistics cannot be folded")
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    folded = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    return folded, shift if bias is None else bias * scale + shift


def keep_planes(x: torch.Tensor, halo: int, keep: int) -> torch.Tensor:
    """Of a slab carrying ``halo`` planes on each side, the part carrying only ``keep``."""
    cut = halo - keep
    return x if cut == 0 else x[:, :, cut : x.shape[2] - cut]


def depth_halo_conv(conv: nn.Conv3d, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
    """``norm(conv(x))`` (eval mode) for a depth slab that already carries its halo planes.

    ``x`` holds the planes the output slab reads along the first spatial axis (zeros beyond the
    volume), so only the two in-plane axes are padded here; the result equals the whole-volume
    convolution on those planes.
    """
    weight, bias = fold_batchnorm(conv.weight, conv.bias, norm)
    p = conv.padding[0]
    return F.conv3d(x, weight, bias, padding=(0, p, p), dilation=conv.dilation)


def reach(conv: nn.Module) -> int:
    """Input voxels a conv reads on each side of an output voxel's centre (largest rate)."""
    if hasattr(conv, "reach"):  # AutofocusConv
        return conv.reach
    return conv.dilation[0] * (conv.kernel_size[0] - 1) // 2
