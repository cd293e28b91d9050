"""The autofocus convolution (Qin et al., MICCAI 2018) and a hook to read its attention.

One kernel is applied at K dilation rates; a small attention branch predicts, per voxel, a softmax
over the K rates, and the output is the attention-weighted sum of the K branch outputs. Sharing the
kernel is the point of the layer: the network learns *what* to detect once and *how far to look* per
voxel, which is also what makes the attention map worth showing to a user.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_autofocus.errors import AutofocusError

from .slabs import conv3d, fold_batchnorm, keep_halo

_CONV = {2: F.conv2d, 3: F.conv3d}
_CONV_MODULE = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


class AutofocusConv(nn.Module):
    """K parallel dilated convolutions sharing one kernel, mixed by a per-voxel softmax attention.

    Args:
        in_channels, out_channels: channel counts of the (shared) kernel.
        kernel_size: odd cubic/square kernel size.
        dilations: the K rates. The reference uses (2, 6, 10, 14).
        spatial_dims: 3 (volumes) or 2 (images).
        padding: ``"valid"`` reproduces the reference: the output has the size of a valid convolution
            at the smallest rate, larger rates are zero-padded to that size and the attention map
            (valid 3^d conv) is centre-cropped to it. ``"same"`` keeps the input size in every branch.
        branch_norm: one BatchNorm per branch after its convolution (the reference's ``bn_list``).
        bias: ``"first"`` adds the bias only to branch 0 - a quirk of the reference that changes
            eval-mode outputs, so imported models need it; ``"all"`` adds it to every branch (what a
            converted ordinary conv needs to stay equivalent); ``False``/``None`` for no bias.
        detach_attention: feed ``x.detach()`` to the attention branch, as the reference does, so the
            attention never pushes gradients into the trunk; the attention convs still learn.
        attention_hidden: channels of the attention's hidden layer; default ``in_channels // 2``.

    Runtime switches (not saved): ``keep_attention`` stores the last attention map in
    ``last_attention`` (N, K, *spatial); ``attention_override`` replaces the softmax output with
    ``"uniform"``, an ``int`` (all weight on that branch) or a length-K sequence of weights - used
    for counterfactual views and receptive-field tests.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        dilations: Sequence[int] = (2, 6, 10, 14),
        spatial_dims: int = 3,
        padding: str = "valid",
        branch_norm: bool = True,
        bias: str | bool | None = "first",
        detach_attention: bool = True,
        attention_hidden: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in _CONV:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd so branches can be aligned, got {kernel_size}")
        dilations = tuple(int(d) for d in dilations)
        if not dilations or min(dilations) < 1:
            raise ValueError(f"dilations must be positive integers, got {dilations}")
        if bias is True:
            bias = "all"
        if bias not in ("first", "all", False, None):
            raise ValueError(f"bias must be 'first', 'all' or False, got {bias!r}")
        hidden = attention_hidden if attention_hidden is not None else in_channels // 2
        if hidden < 1:
            raise ValueError(f"attention_hidden must be >= 1 (in_channels={in_channels})")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dilations = dilations
        self.K = len(dilations)
        self.spatial_dims = spatial_dims
        self.padding = padding
        self.bias_mode = bias or None
        self.detach_attention = detach_attention
        self.attention_hidden = hidden
        self.keep_attention = False
        self.last_attention: torch.Tensor | None = None
        self.attention_override: str | int | Sequence[float] | None = None

        shape = (out_channels, in_channels) + (kernel_size,) * spatial_dims
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if self.bias_mode else None
        norm = _NORM[spatial_dims]
        self.norms = nn.ModuleList(norm(out_channels) for _ in dilations) if branch_norm else None
        conv = _CONV_MODULE[spatial_dims]
        self.att1 = conv(in_channels, hidden, 3, padding=1 if padding == "same" else 0)
        self.att2 = conv(hidden, self.K, 1)
        nn.init.normal_(self.weight, 0.0, 0.01)

    # -- geometry -------------------------------------------------------------------------------
    @property
    def shrink(self) -> int:
        """Voxels removed per side by this layer (0 in "same" mode)."""
        if self.padding == "same":
            return 0
        return min(self.dilations) * (self.kernel_size - 1) // 2

    @property
    def reach(self) -> int:
        """Input voxels read on each side of an output voxel's centre (at the largest rate)."""
        return max(self.dilations) * (self.kernel_size - 1) // 2

    def branch_padding(self, k: int) -> int:
        """Zero padding of branch k, chosen so all branches have the output size of the layer."""
        half = self.dilations[k] * (self.kernel_size - 1) // 2
        return half - self.shrink

    # -- forward ----------------------------------------------------------------------------------
    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax attention over the K branches, on the output grid (before any override)."""
        src = x.detach() if self.detach_attention else x
        logits = self.att2(F.relu(self.att1(src)))
        a = torch.softmax(logits, dim=1)
        crop = self.shrink - (0 if self.padding == "same" else 1)
        if crop > 0:
            a = a[(slice(None), slice(None)) + (slice(crop, -crop),) * self.spatial_dims]
        elif crop < 0:  # a smallest rate of 1 in valid mode: the 3^d attention conv shrinks more
            raise ValueError("valid-mode autofocus needs a smallest dilation >= 1 with kernel_size 3")
        return a

    def _override(self, a: torch.Tensor) -> torch.Tensor:
        ov = self.attention_override
        if ov is None:
            return a
        if isinstance(ov, str):
            if ov != "uniform":
                raise ValueError(f"attention_override must be 'uniform', an int or K weights, got {ov!r}")
            weights = [1.0 / self.K] * self.K
        elif isinstance(ov, int):
            if not 0 <= ov < self.K:
                raise ValueError(f"attention_override branch {ov} out of range 0..{self.K - 1}")
            weights = [1.0 if k == ov else 0.0 for k in range(self.K)]
        else:
            weights = [float(w) for w in ov]
            if len(weights) != self.K:
                raise ValueError(f"attention_override needs {self.K} weights, got {len(weights)}")
        shape = (1, self.K) + (1,) * self.spatial_dims
        return torch.tensor(weights, dtype=a.dtype, device=a.device).reshape(shape).expand_as(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self._override(self.attention(x))
        if self.keep_attention:
            self.last_attention = a.detach()
        conv = _CONV[self.spatial_dims]
        out = None
        for k, rate in enumerate(self.dilations):
            use_bias = self.bias_mode == "all" or (self.bias_mode == "first" and k == 0)
            y = conv(
                x,
                self.weight,
                self.bias if use_bias else None,
                padding=self.branch_padding(k),
                dilation=rate,
            )
            if self.norms is not None:
                y = self.norms[k](y)
            term = a[:, k : k + 1] * y
            out = term if out is None else out + term
        return out

    def forward_halo(self, x: torch.Tensor, boxed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval-mode (output, attention) of a slab that carries ``reach`` halo planes (and, when
        ``boxed``, ``reach`` halo voxels in-plane too).

        Used by per-layer streaming: the halo holds the neighbouring voxels of the whole volume
        (zeros beyond its border, where this layer zero-pads), so the slab's output equals one
        whole-volume pass there. Whole planes pad in-plane as the layer does; a box pads nothing.
        Batch norm is folded into each branch's kernel. 3D only.
        """
        if self.spatial_dims != 3:
            raise ValueError("slab streaming is for 3D autofocus layers")
        pad = 0 if boxed else int(self.padding == "same")
        hidden = conv3d(
            keep_halo(x, self.reach, 1, boxed), self.att1.weight, self.att1.bias, 1, (0, pad, pad)
        )
        a = torch.softmax(self.att2(F.relu_(hidden)), dim=1)
        crop = 0 if boxed else self.shrink - 1 + pad
        if crop > 0:
            a = a[:, :, :, crop:-crop, crop:-crop]
        a = self._override(a)
        out = None
        for k, rate in enumerate(self.dilations):
            use_bias = self.bias_mode == "all" or (self.bias_mode == "first" and k == 0)
            norm = self.norms[k] if self.norms is not None else None
            weight, bias = fold_batchnorm(self.weight, self.bias if use_bias else None, norm)
            keep = rate * (self.kernel_size - 1) // 2
            p = 0 if boxed else self.branch_padding(k)
            y = conv3d(keep_halo(x, self.reach, keep, boxed), weight, bias, rate, (0, p, p))
            out = y.mul_(a[:, k : k + 1]) if out is None else out.addcmul_(a[:, k : k + 1], y)
        return out, a

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilations={self.dilations}, padding={self.padding!r}, bias={self.bias_mode!r}, "
            f"detach_attention={self.detach_attention}"
        )


def autofocus_layers(model: nn.Module) -> list[tuple[str, AutofocusConv]]:
    """(dotted name, layer) of every AutofocusConv in registration order (= forward order here)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AutofocusConv)]


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record every autofocus layer's attention during the forward passes inside the block.

    Yields a dict that, after a forward pass, maps "AF1".."AFn" (forward order) to the attention
    tensors (N, K, *spatial) of the last pass. The layers' ``keep_attention`` flags are restored on
    exit, so capturing costs nothing outside the block.
    """
    layers = [m for _, m in autofocus_layers(model)]
    captured: dict[str, torch.Tensor] = {}
    order: list[AutofocusConv] = []
    saved = [(m.keep_attention, m.last_attention) for m in layers]
    hooks = []

    def make_hook(layer: AutofocusConv):
        def hook(module, inputs, output):
            if layer not in order:
                order.append(layer)
            captured[f"AF{order.index(layer) + 1}"] = layer.last_attention

        return hook

    try:
        for m in layers:
            m.keep_attention = True
            hooks.append(m.register_forward_hook(make_hook(m)))
        yield captured
    finally:
        for h in hooks:
            h.remove()
        for m, (keep, last) in zip(layers, saved, strict=True):
            m.keep_attention = keep
            if not keep:
                m.last_attention = last


@contextlib.contextmanager
def override_attention(model: nn.Module, layer: str, value) -> Iterator[AutofocusConv]:
    """Force autofocus layer ``layer`` ("AF1".."AFn") to ``value`` inside the block: "uniform", a
    branch index, or K weights (see :class:`AutofocusConv`). The previous setting comes back on
    exit, also after an error or a Cancel, so a counterfactual never leaks into the next run."""
    geometry = {g["name"]: g["module"] for g in model.autofocus_geometry()}
    if layer not in geometry:
        raise AutofocusError(
            f"this model has no autofocus layer {layer!r} (it has {', '.join(geometry) or 'none'})"
        )
    module = model.get_submodule(geometry[layer])
    before = module.attention_override
    module.attention_override = value
    try:
        yield module
    finally:
        module.attention_override = before
