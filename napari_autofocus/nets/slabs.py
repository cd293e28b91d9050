"""Slab helpers for per-layer streaming inference: batch norm folding, halo convolutions, costs.

A layer computed slab by slab reads its neighbours from the whole volume (its halo) instead of
zero padding at the slab's border; zeros come only from beyond the volume's border, where the
whole-volume layer pads. A slab is whole planes (a halo along depth only: the layer pads the two
in-plane axes itself, without copying its input) or, where only part of each plane is needed,
a box (``boxed``: a halo on every side, no padding). No module here keeps state.
"""

from __future__ import annotations

import math

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


def keep_halo(x: torch.Tensor, halo: int, keep: int, boxed: bool = True) -> torch.Tensor:
    """Of a slab carrying ``halo`` voxels of halo, the part carrying only ``keep``: along depth,
    and in-plane too when ``boxed``."""
    cut = halo - keep
    if cut == 0:
        return x
    if not boxed:
        return x[:, :, cut : x.shape[2] - cut]
    return x[:, :, cut : x.shape[2] - cut, cut : x.shape[3] - cut, cut : x.shape[4] - cut]


CPU_BF16_MAX_DILATION = 2  # oneDNN's bf16 (AMX) kernels: 4-5x fp32 at dilation <= 2, slower above
# (50->50 3^3 conv, 2-core AVX-512/AMX CPU: dilation 2 1143 vs 206 GFLOP/s; 6: 246 vs 234; 14: 53 vs 230)


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, dilation=1, padding=0):
    """``F.conv3d`` on a dense input (a box cut from a channels-last slab is a strided view, which
    oneDNN does not take: torch then falls back to a far slower kernel). Under CPU bf16 autocast,
    dilations oneDNN has no fast bf16 kernel for run in float32 (the product then stays float32)."""
    if x.dim() == 5 and x.stride(1) == 1 and x.shape[1] > 1:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    else:
        x = x.contiguous()
    rate = dilation if isinstance(dilation, int) else max(dilation)
    if rate > CPU_BF16_MAX_DILATION and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            bias = None if bias is None else bias.float()
            return F.conv3d(x.float(), weight.float(), bias, dilation=dilation, padding=padding)
    return F.conv3d(x, weight, bias, dilation=dilation, padding=padding)


def halo_conv(conv: nn.Conv3d, x: torch.Tensor, norm: nn.Module | None = None, boxed: bool = True):
    """``norm(conv(x))`` (eval mode) for a slab that already carries its halo.

    ``x`` holds every plane the output slab reads (zeros beyond the volume's border, which is
    where the layer zero-pads) and, when ``boxed``, every voxel of the box's in-plane halo too:
    the convolution then runs without padding; else it pads the two in-plane axes itself. Either
    way it equals the whole-volume convolution there.
    """
    weight, bias = fold_batchnorm(conv.weight, conv.bias, norm)
    p = 0 if boxed else conv.padding[0]
    return conv3d(x, weight, bias, conv.dilation, (0, p, p))


def conv_flops(module: nn.Module) -> float:
    """Floating-point operations (multiply-adds x 2) per output voxel of one convolution layer:
    a ``Conv3d``, an autofocus layer (its K branches and its attention) or a head made of them."""
    if isinstance(module, nn.Conv3d):
        per_output = module.in_channels // module.groups * module.out_channels
        return 2.0 * per_output * math.prod(module.kernel_size)
    if hasattr(module, "dilations"):  # AutofocusConv: K branches of one kernel, plus its attention
        branch = 2.0 * module.in_channels * module.out_channels * module.kernel_size**3
        return len(module.dilations) * branch + conv_flops(module.att1) + conv_flops(module.att2)
    return sum(conv_flops(m) for m in module.children())


def reach(conv: nn.Module) -> int:
    """Input voxels a conv reads on each side of an output voxel's centre (largest rate)."""
    if hasattr(conv, "reach"):  # AutofocusConv
        return conv.reach
    return conv.dilation[0] * (conv.kernel_size[0] - 1) // 2
