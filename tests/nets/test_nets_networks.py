"""The paper's networks: Table 3 parameter counts, sizes, receptive fields and geometry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_autofocus.nets import ARCHITECTURES, AutofocusConv, NetworkConfigError, build_network

# Paper Table 3 (4 inputs, 5 classes, all nn.Parameters); AFN2-5 and DM from the reference facts.
TABLE3 = {
    "BASIC": 315_725,
    "ASPP_S": 967_330,
    "ASPP_C": 478_435,
    "DM": 662_555,
    "AFN1": 349_904,
    "AFN2": 371_908,
    "AFN3": 393_852,
    "AFN4": 415_796,
    "AFN5": 437_740,
    "AFN6": 450_209,
}
RF_MAX = {"BASIC": 29, "ASPP_C": 57, "ASPP_S": 57, "DM": 51, **{f"AFN{n}": 29 + 24 * n for n in range(1, 7)}}
SMALL = {"channels": (2,) * 8}


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_table3_parameter_counts(arch):
    assert _count(build_network(arch, 4, 5)) == TABLE3[arch]


@pytest.mark.parametrize(
    "arch,count", [("BASIC", 313_295), ("ASPP_S", 964_900), ("AFN6", 447_779), ("DM", 657_695)]
)
def test_parameter_counts_with_one_input_channel(arch, count):
    assert _count(build_network(arch, 1, 5)) == count


def test_one_more_class_adds_the_classifier_row():
    assert _count(build_network("BASIC", 4, 6)) - TABLE3["BASIC"] == 51
    assert _count(build_network("ASPP_C", 4, 6)) - TABLE3["ASPP_C"] == 121
    assert _count(build_network("ASPP_S", 4, 6)) - TABLE3["ASPP_S"] == 4 * 121


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_geometry_and_output_size(arch):
    net = build_network(arch, 1, 3, **SMALL).eval()
    assert net.receptive_field == RF_MAX[arch]
    assert net.margin == (24 if arch == "DM" else 14)
    assert net.input_multiple == (3 if arch == "DM" else 1)
    size = 51 if arch == "DM" else 31
    with torch.no_grad():
        y = net(torch.randn(1, 1, size, size, size))
    out = net.output_size(size)
    assert out == size - 2 * net.margin
    assert y.shape == (1, 3, out, out, out)
    n_af = int(arch[3]) if arch.startswith("AFN") else 0
    assert len(net.autofocus_geometry()) == n_af
    assert net.receptive_field_min == (29 if arch.startswith(("AFN", "BASIC")) else RF_MAX[arch])


def test_reference_spellings_and_errors():
    assert build_network("Basic", **SMALL).arch == "BASIC"
    assert build_network("ASPP_c", **SMALL).arch == "ASPP_C"
    assert build_network("ASPP_s", **SMALL).arch == "ASPP_S"
    assert build_network("afn3", **SMALL).arch == "AFN3"
    with pytest.raises(NetworkConfigError, match="unknown architecture"):
        build_network("AFN7")
    with pytest.raises(NetworkConfigError, match="unknown network option"):
        build_network("AFN1", dilation=(1, 2))
    with pytest.raises(NetworkConfigError, match="divisible by 3"):
        build_network("DM", **SMALL).output_size(52)


def test_autofocus_geometry_afn1_and_afn6():
    (g,) = build_network("AFN1", **SMALL).autofocus_geometry()
    assert g == {
        "name": "AF1",
        "module": "layer5.conv2",
        "offset": 14,
        "rates": [2, 6, 10, 14],
        "kernel_size": 3,
        "rf_in": 25,
    }
    afn6 = build_network("AFN6", **SMALL)
    geometry = afn6.autofocus_geometry()
    assert [g["offset"] for g in geometry] == [4, 6, 8, 10, 12, 14]
    assert [g["rf_in"] for g in geometry] == [5, 9, 13, 17, 21, 25]
    assert afn6.effective_receptive_field([14] * 6) == 173
    assert afn6.effective_receptive_field([2, 2, 2, 2, 2, 6]) == 37


def test_afn_converts_the_last_n_dilated_convs():
    for n in range(1, 7):
        net = build_network(f"AFN{n}", **SMALL)
        names = [name for name, m in net.named_modules() if isinstance(m, AutofocusConv)]
        all_dilated = [f"layer{b}.conv{c}" for b in (3, 4, 5) for c in (1, 2)]
        assert names == all_dilated[6 - n :]


def test_same_padding_variant_keeps_size():
    net = build_network("AFN2", 1, 2, padding="same", **SMALL).eval()
    assert net.margin == 0 and net.output_size(20) == 20
    assert [g["offset"] for g in net.autofocus_geometry()] == [0, 0]
    with torch.no_grad():
        assert net(torch.randn(1, 1, 20, 20, 20)).shape == (1, 2, 20, 20, 20)


def _receptive_extent(net: nn.Module, size: int) -> list[int]:
    """Extent (voxels per axis) of the input region that influences the centre output voxel."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm3d):  # positive shift keeps every ReLU open: no dead paths
            nn.init.constant_(m.bias, 1.0)
    net.eval()
    x = torch.randn(1, 1, size, size, size, requires_grad=True)
    y = net(x)
    c = y.shape[-1] // 2
    y[0, 0, c, c, c].backward()
    nz = x.grad[0, 0].abs() > 0
    extents = []
    for axis in range(3):
        idx = nz.any(dim=tuple(a for a in range(3) if a != axis)).nonzero()
        extents.append(int(idx.max() - idx.min() + 1))
    return extents


def test_receptive_field_by_input_gradient_basic():
    torch.manual_seed(0)
    assert _receptive_extent(build_network("BASIC", 1, 2, **SMALL), 33) == [29, 29, 29]


@pytest.mark.parametrize("branch,expected", [(3, 53), (0, 29)])
def test_receptive_field_by_input_gradient_afn1(branch, expected):
    torch.manual_seed(0)
    net = build_network("AFN1", 1, 2, **SMALL)
    for m in net.modules():
        if isinstance(m, AutofocusConv):
            m.attention_override = branch
    assert _receptive_extent(net, 61) == [expected] * 3
