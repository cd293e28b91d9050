"""The paper's networks (BASIC, AFN-1..6, ASPP-c, ASPP-s, DM) and ``build_network``.

Structure, valid convolutions, init and parameter counts follow the authors' reference code (see
``shared/reference/reference_implementation.md``); module names are ours but close to theirs, and
:mod:`.reference` maps their checkpoint keys. Every network also describes its own geometry
(margin, receptive field, where each autofocus layer's attention grid sits on the input) so that
inference and visualisation code never hard-codes it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from napari_autofocus.errors import AutofocusError

from .autofocus import AutofocusConv
from .blocks import ResidualBlock, per_side_shrink
from .slabs import depth_halo_conv, keep_planes, reach

DEFAULT_CHANNELS = (30, 30, 40, 40, 40, 40, 50, 50)
DEFAULT_DILATIONS = (2, 6, 10, 14)
ARCHITECTURES = ("BASIC", "AFN1", "AFN2", "AFN3", "AFN4", "AFN5", "AFN6", "ASPP_C", "ASPP_S", "DM")


class NetworkConfigError(AutofocusError, ValueError):
    """An unknown architecture, option or input size."""


def reference_init(model: nn.Module) -> None:
    """Conv kernels ~ N(0, 0.01^2), BN gamma 1 / beta 0; biases keep PyTorch's default (reference)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | AutofocusConv):
            nn.init.normal_(m.weight, 0.0, 0.01)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegmentationNet(nn.Module):
    """Common geometry API. Subclasses fill ``_chain``: the convs on the path to the output.

    Each chain entry is ``(dotted module name, kernel size, rates, shrink per side, autofocus)``;
    for a plain conv ``rates`` has one element, for an autofocus conv its K dilations, for a set
    of parallel same-padded ASPP convs all rates (all always contribute, so the max counts).
    """

    input_multiple: int = 1

    def __init__(self, arch: str, in_channels: int, num_classes: int, options: dict) -> None:
        super().__init__()
        self.arch = arch
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.options = options
        self._chain: list[tuple[str, int, tuple[int, ...], int, bool]] = []

    # -- sizes ----------------------------------------------------------------------------------
    @property
    def margin(self) -> int:
        """Voxels removed per side: output voxel i sits over input voxel i + margin."""
        return sum(entry[3] for entry in self._chain)

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
        return 1 + sum((k - 1) * (pick(rates) if af else max(rates)) for _, k, rates, _, af in self._chain)

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
        af = [e for e in self._chain if e[4]]
        if len(rates) != len(af):
            raise ValueError(f"{self.arch} has {len(af)} autofocus layers, got {len(rates)} rates")
        extra = sum((k - 1) * (r - min(rs)) for (_, k, rs, _, _), r in zip(af, rates, strict=True))
        return self.receptive_field_min + extra

    def autofocus_geometry(self) -> list[dict]:
        """Where each autofocus layer sits, for placing attention maps on the input grid.

        ``offset``: per-side offset (input voxels) of the layer's output/attention grid relative to
        the network input. ``rf_in``: receptive field at the layer's input, with earlier autofocus
        layers at their smallest rate (add (k-1)*(rate-r_min) per earlier layer for others).
        """
        out, offset, rf, n = [], 0, 1, 0
        for name, k, rates, shrink, af in self._chain:
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


class TrunkNet(SegmentationNet):
    """conv1, conv2 (3^3, BN, ReLU) and three residual blocks of dilated convs: the shared trunk.

    ``n_autofocus`` turns the last n of the six dilated convs into AutofocusConv (AFN-n).
    """

    def __init__(
        self,
        arch: str,
        in_channels: int,
        options: dict,
        num_classes: int,
        n_autofocus: int = 0,
    ) -> None:
        super().__init__(arch, in_channels, num_classes, options)
        ch = tuple(options["channels"])
        pad = options["padding"]
        same = pad == "same"
        self.conv1 = nn.Conv3d(in_channels, ch[0], 3, padding=int(same))
        self.bn1 = nn.BatchNorm3d(ch[0])
        self.conv2 = nn.Conv3d(ch[0], ch[1], 3, padding=int(same))
        self.bn2 = nn.BatchNorm3d(ch[1])
        af_flags = [i >= 6 - n_autofocus for i in range(6)]
        af_options = {
            "dilations": tuple(options.get("dilations", DEFAULT_DILATIONS)),
            "detach_attention": options.get("detach_attention", True),
            "attention_hidden": options.get("attention_hidden"),
            "bias": "first",
            "branch_norm": True,
        }
        specs = [(ch[1], ch[2], ch[3]), (ch[3], ch[4], ch[5]), (ch[5], ch[6], ch[7])]
        for i, (a, b, c) in enumerate(specs):
            block = ResidualBlock(a, b, c, 2, pad, (af_flags[2 * i], af_flags[2 * i + 1]), af_options)
            self.add_module(f"layer{3 + i}", block)
        self.trunk_channels = ch[7]
        self._chain = [("conv1", 3, (1,), int(not same), False), ("conv2", 3, (1,), int(not same), False)]
        for i in range(3):
            block = getattr(self, f"layer{3 + i}")
            for cname, conv in block.convs():
                af = isinstance(conv, AutofocusConv)
                rates = conv.dilations if af else (conv.dilation[0],)
                self._chain.append((f"layer{3 + i}.{cname}", 3, rates, per_side_shrink(conv), af))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.layer5(self.layer4(self.layer3(x)))


class BasicNet(TrunkNet):
    """BASIC (n_autofocus=0) and AFN-n: the trunk plus a 1^3 classifier ``fc``."""

    def __init__(self, arch, in_channels, num_classes, options, n_autofocus=0):
        super().__init__(arch, in_channels, options, num_classes, n_autofocus)
        self.fc = nn.Conv3d(self.trunk_channels, num_classes, 1)
        reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))


class ASPPConcatHead(nn.Module):
    """ASPP-c: parallel same-padded dilated 3^3 convs, concatenated, BN, ReLU, 1^3 classifier."""

    def __init__(self, in_ch: int, branch_ch: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv3d(in_ch, branch_ch, 3, dilation=r, padding=r) for r in rates)
        self.bn = nn.BatchNorm3d(branch_ch * len(rates))
        self.classifier = nn.Conv3d(branch_ch * len(rates), num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([conv(x) for conv in self.branches], dim=1)
        return self.classifier(F.relu(self.bn(y)))

    @property
    def reach(self) -> int:
        return max(conv.dilation[0] for conv in self.branches)

    def forward_depth_halo(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits of a depth slab carrying ``reach`` halo planes (see ``nets.slabs``)."""
        y = torch.cat(
            [depth_halo_conv(conv, keep_planes(x, self.reach, reach(conv))) for conv in self.branches], 1
        )
        return depth_halo_conv(self.classifier, F.relu_(self.bn(y)))


class ASPPSumHead(nn.Module):
    """ASPP-s: per rate a dilated 3^3 conv, BN, ReLU and 1^3 classifier; the logits are summed."""

    def __init__(self, in_ch: int, branch_ch: int, num_classes: int, rates: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv3d(in_ch, branch_ch, 3, dilation=r, padding=r) for r in rates)
        self.norms = nn.ModuleList(nn.BatchNorm3d(branch_ch) for _ in rates)
        self.classifiers = nn.ModuleList(nn.Conv3d(branch_ch, num_classes, 1) for _ in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for conv, bn, fc in zip(self.branches, self.norms, self.classifiers, strict=True):
            y = fc(F.relu(bn(conv(x))))
            out = y if out is None else out + y
        return out

    @property
    def reach(self) -> int:
        return max(conv.dilation[0] for conv in self.branches)

    def forward_depth_halo(self, x: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits of a depth slab carrying ``reach`` halo planes (see ``nets.slabs``)."""
        out = None
        for conv, bn, fc in zip(self.branches, self.norms, self.classifiers, strict=True):
            y = depth_halo_conv(
                fc, F.relu_(depth_halo_conv(conv, keep_planes(x, self.reach, reach(conv)), bn))
            )
            out = y if out is None else out.add_(y)
        return out


class ASPPNet(TrunkNet):
    """ASPP_C / ASPP_S: the trunk (no fc) followed by an ASPP head."""

    def __init__(self, arch, in_channels, num_classes, options):
        super().__init__(arch, in_channels, options, num_classes, 0)
        rates = tuple(options["dilations"])
        head = ASPPConcatHead if arch == "ASPP_C" else ASPPSumHead
        self.head = head(self.trunk_channels, options["head_channels"], num_classes, rates)
        self._chain.append(("head", 3, rates, 0, False))
        reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


# -- build_network ----------------------------------------------------------------------------------

_ALIASES = {"BASIC": "BASIC", "ASPP_C": "ASPP_C", "ASPP-C": "ASPP_C", "ASPP_S": "ASPP_S", "ASPP-S": "ASPP_S"}
_ALIASES.update({f"AFN{i}": f"AFN{i}" for i in range(1, 7)})
_ALIASES.update({f"AFN-{i}": f"AFN{i}" for i in range(1, 7)})
_ALIASES.update({"DM": "DM", "DEEPMEDIC": "DM"})

# Options each family understands, with defaults. Options of another family are accepted (a training
# CLI may pass one set for all) but not recorded; unknown names are refused to catch typos.
_OPTIONS = {
    "BASIC": {"channels": DEFAULT_CHANNELS, "padding": "valid"},
    "AFN": {
        "channels": DEFAULT_CHANNELS,
        "padding": "valid",
        "dilations": DEFAULT_DILATIONS,
        "detach_attention": True,
        "attention_hidden": None,
    },
    "ASPP_C": {
        "channels": DEFAULT_CHANNELS,
        "padding": "valid",
        "dilations": DEFAULT_DILATIONS,
        "head_channels": 30,
    },
    "ASPP_S": {
        "channels": DEFAULT_CHANNELS,
        "padding": "valid",
        "dilations": DEFAULT_DILATIONS,
        "head_channels": 120,
    },
    "DM": {"channels": DEFAULT_CHANNELS, "fc_channels": (150, 150)},
}
_KNOWN = {name for opts in _OPTIONS.values() for name in opts}


def canonical_arch(arch: str) -> str:
    """'Basic' -> 'BASIC', 'ASPP_c' -> 'ASPP_C', 'afn-3' -> 'AFN3'; unknown names raise."""
    key = str(arch).strip().upper()
    if key not in _ALIASES:
        raise NetworkConfigError(f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    return _ALIASES[key]


def resolve_options(arch: str, options: dict) -> dict:
    """Defaults filled in, irrelevant options dropped, values JSON-friendly (lists, not tuples)."""
    arch = canonical_arch(arch)
    unknown = sorted(set(options) - _KNOWN)
    if unknown:
        raise NetworkConfigError(f"unknown network option(s) {unknown}; known: {sorted(_KNOWN)}")
    family = "AFN" if arch.startswith("AFN") else arch
    resolved = {}
    for name, default in _OPTIONS[family].items():
        value = options.get(name, default)
        resolved[name] = list(value) if isinstance(value, tuple | list) else value
    if len(resolved["channels"]) != 8:
        raise NetworkConfigError(f"channels needs 8 values, got {resolved['channels']}")
    if resolved.get("padding", "valid") not in ("valid", "same"):
        raise NetworkConfigError(f"padding must be 'valid' or 'same', got {resolved['padding']!r}")
    return resolved


def build_network(arch: str, in_channels: int = 4, num_classes: int = 5, **options) -> SegmentationNet:
    """Build one of :data:`ARCHITECTURES` (reference spellings such as "Basic", "ASPP_c" accepted).

    Options: ``channels`` (8 trunk/pathway widths), ``padding`` ("valid" as in the paper, or "same"
    for a size-preserving variant), ``dilations``, ``detach_attention``, ``attention_hidden`` (AFN),
    ``head_channels`` (ASPP), ``fc_channels`` (DM).
    """
    arch = canonical_arch(arch)
    opts = resolve_options(arch, options)
    if arch == "BASIC":
        return BasicNet(arch, in_channels, num_classes, opts, 0)
    if arch.startswith("AFN"):
        return BasicNet(arch, in_channels, num_classes, opts, int(arch[3:]))
    if arch.startswith("ASPP"):
        return ASPPNet(arch, in_channels, num_classes, opts)
    from .deepmedic import DeepMedic

    return DeepMedic(in_channels, num_classes, opts)
