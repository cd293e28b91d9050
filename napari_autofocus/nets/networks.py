"""The paper's networks (BASIC, AFN-1..6, ASPP-c, ASPP-s, DM) and ``build_network``.

Structure, valid convolutions, init and parameter counts follow the authors' reference code (see
``shared/reference/reference_implementation.md``); module names are ours but close to theirs, and
:mod:`.reference` maps their checkpoint keys. Every network also describes its own geometry
(margin, receptive field, where each autofocus layer's attention grid sits on the input) so that
inference and visualisation code never hard-codes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .autofocus import AutofocusConv
from .base import ChainEntry, SegmentationNet, reference_init
from .blocks import ResidualBlock, per_side_shrink
from .deepmedic import DeepMedic
from .registry import ARCHITECTURES, OPTIONS, NetworkConfigError, canonical_arch, resolve_options
from .slabs import halo_conv, keep_halo, reach

__all__ = [
    "ARCHITECTURES",
    "NetworkConfigError",
    "SegmentationNet",
    "StreamLayout",
    "build_network",
    "canonical_arch",
]


@dataclass(frozen=True)
class StreamLayout:
    """The parts a network hands the streaming engine (:mod:`napari_autofocus.inference.streaming`),
    which runs them slab by slab: the engine asks ``model.stream_layout()`` instead of checking the
    network's class, so a new network streams by describing itself."""

    stem: tuple[tuple[str, nn.Module, nn.Module], ...]  # (name, 3^3 conv, its norm), ReLU after each
    blocks: tuple[tuple[str, nn.Module], ...]  # residual blocks (their convs and norms), in order
    classifier: nn.Module | None = None  # a 1^3 conv after the last block (fused into it)
    head: nn.Module | None = None  # a head that reads neighbours: ``reach`` and ``forward_halo(x, boxed)``


class TrunkNet(SegmentationNet):
    """conv1, conv2 (3^3, BN, ReLU) and three residual blocks of dilated convs: the shared trunk.

    ``n_autofocus`` turns the last n of the six dilated convs into AutofocusConv (AFN-n).
    """

    def __init__(
        self, *, arch: str, in_channels: int, num_classes: int, options: dict, n_autofocus: int = 0
    ) -> None:
        super().__init__(arch=arch, in_channels=in_channels, num_classes=num_classes, options=options)
        ch = tuple(options["channels"])
        pad = options["padding"]
        same = pad == "same"
        self.conv1 = nn.Conv3d(in_channels, ch[0], 3, padding=int(same))
        self.bn1 = nn.BatchNorm3d(ch[0])
        self.conv2 = nn.Conv3d(ch[0], ch[1], 3, padding=int(same))
        self.bn2 = nn.BatchNorm3d(ch[1])
        af_flags = [i >= 6 - n_autofocus for i in range(6)]
        afn = {**OPTIONS["AFN"], **options}  # BASIC and ASPP have no autofocus options of their own
        af_options = {
            "dilations": tuple(afn["dilations"]),
            "detach_attention": afn["detach_attention"],
            "attention_hidden": afn["attention_hidden"],
            "bias": "first",
            "branch_norm": True,
        }
        specs = [(ch[1], ch[2], ch[3]), (ch[3], ch[4], ch[5]), (ch[5], ch[6], ch[7])]
        for i, (a, b, c) in enumerate(specs):
            block = ResidualBlock(a, b, c, 2, pad, (af_flags[2 * i], af_flags[2 * i + 1]), af_options)
            self.add_module(f"layer{3 + i}", block)
        self.trunk_channels = ch[7]
        self._chain = [
            ChainEntry("conv1", 3, (1,), int(not same), False),
            ChainEntry("conv2", 3, (1,), int(not same), False),
        ]
        for i in range(3):
            block = getattr(self, f"layer{3 + i}")
            for cname, conv in block.convs():
                af = isinstance(conv, AutofocusConv)
                rates = conv.dilations if af else (conv.dilation[0],)
                self._chain.append(ChainEntry(f"layer{3 + i}.{cname}", 3, rates, per_side_shrink(conv), af))

    def stream_layout(self) -> StreamLayout | None:
        """What the streaming engine runs slab by slab; None when the output part cannot stream."""
        return None  # a trunk alone has no output part: BasicNet and ASPPNet say what theirs is

    def _layout(self, **output) -> StreamLayout:
        return StreamLayout(
            stem=(("conv1", self.conv1, self.bn1), ("conv2", self.conv2, self.bn2)),
            blocks=tuple((f"layer{i}", getattr(self, f"layer{i}")) for i in (3, 4, 5)),
            **output,
        )

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.layer5(self.layer4(self.layer3(x)))


class BasicNet(TrunkNet):
    """BASIC (n_autofocus=0) and AFN-n: the trunk plus a 1^3 classifier ``fc``."""

    def __init__(
        self, *, arch: str, in_channels: int, num_classes: int, options: dict, n_autofocus: int = 0
    ) -> None:
        super().__init__(
            arch=arch,
            in_channels=in_channels,
            num_classes=num_classes,
            options=options,
            n_autofocus=n_autofocus,
        )
        self.fc = nn.Conv3d(self.trunk_channels, num_classes, 1)
        reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))

    def stream_layout(self) -> StreamLayout:
        return self._layout(classifier=self.fc)


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

    def forward_halo(self, x: torch.Tensor, boxed: bool = True) -> torch.Tensor:
        """Eval-mode logits of a slab carrying ``reach`` halo voxels (see ``nets.slabs``)."""
        y = torch.cat(
            [
                halo_conv(conv, keep_halo(x, self.reach, reach(conv), boxed), boxed=boxed)
                for conv in self.branches
            ],
            1,
        )
        return halo_conv(self.classifier, F.relu_(self.bn(y)))


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

    def forward_halo(self, x: torch.Tensor, boxed: bool = True) -> torch.Tensor:
        """Eval-mode logits of a slab carrying ``reach`` halo voxels (see ``nets.slabs``)."""
        out = None
        for conv, bn, fc in zip(self.branches, self.norms, self.classifiers, strict=True):
            y = halo_conv(
                fc, F.relu_(halo_conv(conv, keep_halo(x, self.reach, reach(conv), boxed), bn, boxed))
            )
            out = y if out is None else out.add_(y)
        return out


class ASPPNet(TrunkNet):
    """ASPP_C / ASPP_S: the trunk (no fc) followed by an ASPP head."""

    def __init__(self, *, arch: str, in_channels: int, num_classes: int, options: dict) -> None:
        super().__init__(arch=arch, in_channels=in_channels, num_classes=num_classes, options=options)
        rates = tuple(options["dilations"])
        head = ASPPConcatHead if arch == "ASPP_C" else ASPPSumHead
        self.head = head(self.trunk_channels, options["head_channels"], num_classes, rates)
        self._chain.append(ChainEntry("head", 3, rates, 0, False))
        reference_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))

    def stream_layout(self) -> StreamLayout | None:
        return self._layout(head=self.head) if hasattr(self.head, "forward_halo") else None


# -- build_network ----------------------------------------------------------------------------------


def build_network(arch: str, in_channels: int = 4, num_classes: int = 5, **options) -> SegmentationNet:
    """Build one of :data:`ARCHITECTURES` (reference spellings such as "Basic", "ASPP_c" accepted).

    Options: ``channels`` (8 trunk/pathway widths), ``padding`` ("valid" as in the paper, or "same"
    for a size-preserving variant), ``dilations``, ``detach_attention``, ``attention_hidden`` (AFN),
    ``head_channels`` (ASPP), ``fc_channels`` (DM).
    """
    arch = canonical_arch(arch)
    opts = resolve_options(arch, options)
    sizes = {"in_channels": in_channels, "num_classes": num_classes, "options": opts}
    if arch == "BASIC" or arch.startswith("AFN"):
        return BasicNet(arch=arch, n_autofocus=0 if arch == "BASIC" else int(arch[3:]), **sizes)
    if arch.startswith("ASPP"):
        return ASPPNet(arch=arch, **sizes)
    return DeepMedic(**sizes)
