"""``autofocusify``: turn ordinary convolutions of any model into autofocus convolutions.

The paper's authors confirmed (reference issue #8) that autofocus can replace both standard and
dilated convs. Copying the kernel keeps what the network learned; the new attention branch starts
from scratch, so a converted model is a starting point for fine-tuning, and with the attention
forced onto the branch whose rate equals the old dilation it reproduces the old conv exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from napari_autofocus.errors import AutofocusError

from .autofocus import AutofocusConv


class SurgeryError(AutofocusError, ValueError):
    """A requested conversion is impossible (not a conv, strided, grouped, unknown name...)."""


def _check_convertible(name: str, module: nn.Module) -> None:
    if not isinstance(module, nn.Conv2d | nn.Conv3d) or isinstance(module, nn.modules.conv._ConvTransposeNd):
        raise SurgeryError(
            f"{name!r} is a {type(module).__name__}, not a Conv2d/Conv3d; only those can be converted"
        )
    if any(s != 1 for s in module.stride):
        raise SurgeryError(f"{name!r} has stride {module.stride}; autofocus convs need stride 1")
    if module.groups != 1:
        raise SurgeryError(f"{name!r} is a grouped conv (groups={module.groups}); not supported")
    if len(set(module.kernel_size)) != 1 or module.kernel_size[0] % 2 != 1:
        raise SurgeryError(f"{name!r} has kernel {module.kernel_size}; an odd cubic/square kernel is needed")
    if module.padding_mode != "zeros":
        raise SurgeryError(
            f"{name!r} uses padding_mode={module.padding_mode!r}; only zero padding is supported"
        )


def _select(model: nn.Module, layers) -> list[str]:
    modules = dict(model.named_modules())
    if callable(layers) and not isinstance(layers, str):
        names = [n for n, m in modules.items() if n and layers(n, m)]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        unknown = [n for n in names if n not in modules or not n]
        if unknown:
            raise SurgeryError(f"no sub-module(s) named {unknown} in the model")
    if not names:
        raise SurgeryError("no layer selected for conversion")
    for n in names:
        _check_convertible(n, modules[n])
    return names


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def autofocusify(
    model: nn.Module,
    layers: str | Iterable[str] | Callable[[str, nn.Module], bool],
    dilations: Sequence[int] = (2, 6, 10, 14),
    padding: str = "same",
    branch_norm: bool = False,
    **autofocus_options,
) -> nn.Module:
    """Replace the chosen Conv2d/Conv3d sub-modules (dotted names, or a predicate ``(name, module)``)
    by AutofocusConv with the same kernel and bias; returns ``model`` (changed in place).

    The bias is shared by all branches (``bias="all"``), so the parameter count grows only by the
    attention convs (plus K norms per layer when ``branch_norm``). ``padding="same"`` keeps sizes;
    "valid" shrinks like a valid conv at the smallest rate.
    """
    names = _select(model, layers)
    for name in names:
        old = model.get_submodule(name)
        dims = 3 if isinstance(old, nn.Conv3d) else 2
        new = AutofocusConv(
            old.in_channels,
            old.out_channels,
            old.kernel_size[0],
            dilations=dilations,
            spatial_dims=dims,
            padding=padding,
            branch_norm=branch_norm,
            bias="all" if old.bias is not None else False,
            **autofocus_options,
        )
        new = new.to(device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        new.train(old.training)
        _replace(model, name, new)
    return model
