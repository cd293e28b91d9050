"""AutofocusConv, capture_attention and autofocusify: the layer's contract, checked numerically."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_autofocus.nets import AutofocusConv, SurgeryError, autofocusify, build_network, capture_attention


def _layer(**kw) -> AutofocusConv:
    torch.manual_seed(0)
    layer = AutofocusConv(4, 3, **kw)
    with torch.no_grad():
        layer.weight.normal_(0, 0.3)
    return layer.eval()


def test_attention_is_a_softmax_on_the_output_grid():
    layer = _layer()
    layer.keep_attention = True
    x = torch.randn(2, 4, 21, 21, 21)
    y = layer(x)
    assert y.shape == (2, 3, 17, 17, 17)  # valid at the smallest rate: 21 - 2*2
    a = layer.last_attention
    assert a.shape == (2, 4, 17, 17, 17)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(2, 17, 17, 17))
    assert (a > 0).all()


def test_valid_mode_sizes_follow_the_smallest_rate_in_2d_and_3d():
    x3 = torch.randn(1, 4, 15, 16, 17)
    assert _layer(dilations=(1, 3))(x3).shape == (1, 3, 13, 14, 15)
    x2 = torch.randn(1, 4, 20, 21)
    assert _layer(spatial_dims=2)(x2).shape == (1, 3, 16, 17)


@pytest.mark.parametrize("dims,shape", [(2, (1, 4, 19, 22)), (3, (1, 4, 9, 10, 11))])
def test_same_padding_keeps_spatial_size(dims, shape):
    layer = _layer(spatial_dims=dims, padding="same")
    layer.keep_attention = True
    y = layer(torch.randn(shape))
    assert y.shape == (1, 3) + shape[2:]
    assert layer.last_attention.shape == (1, 4) + shape[2:]


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_override_to_one_branch_equals_that_dilated_conv(padding):
    layer = _layer(bias="all", branch_norm=False, padding=padding)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(1, 4, 23, 23, 23)
    for k, rate in enumerate(layer.dilations):
        layer.attention_override = k
        pad = rate if padding == "same" else rate - 2
        expected = F.conv3d(x, layer.weight, layer.bias, padding=pad, dilation=rate)
        torch.testing.assert_close(layer(x), expected)


def test_bias_first_quirk_adds_the_bias_to_branch_zero_only():
    layer = _layer(bias="first", branch_norm=False)
    with torch.no_grad():
        layer.bias.fill_(5.0)
    x = torch.randn(1, 4, 13, 13, 13)
    layer.attention_override = 1
    torch.testing.assert_close(layer(x), F.conv3d(x, layer.weight, None, padding=4, dilation=6))
    layer.attention_override = 0
    torch.testing.assert_close(layer(x), F.conv3d(x, layer.weight, layer.bias, dilation=2))


def test_override_weights_and_uniform():
    layer = _layer()
    x = torch.randn(1, 4, 17, 17, 17)
    outs = []
    for k in range(4):
        layer.attention_override = k
        outs.append(layer(x))
    layer.attention_override = "uniform"
    torch.testing.assert_close(layer(x), sum(outs) / 4)
    layer.attention_override = [0.5, 0.0, 0.5, 0.0]
    torch.testing.assert_close(layer(x), 0.5 * outs[0] + 0.5 * outs[2])
    layer.attention_override = [1.0]
    with pytest.raises(ValueError, match="needs 4 weights"):
        layer(x)


def test_branches_share_one_weight_parameter_and_its_gradient_accumulates():
    layer = _layer()
    kernels = [p for p in layer.parameters() if p.shape == (3, 4, 3, 3, 3)]
    assert len(kernels) == 1 and kernels[0] is layer.weight
    x = torch.randn(1, 4, 13, 13, 13)
    per_branch = []
    for k in range(4):
        layer.zero_grad()
        layer.attention_override = k
        layer(x).sum().backward()
        per_branch.append(layer.weight.grad.clone())
    layer.zero_grad()
    layer.attention_override = "uniform"
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, sum(per_branch) / 4)
    assert all(g.abs().sum() > 0 for g in per_branch)


@pytest.mark.parametrize("detach", [True, False])
def test_detach_blocks_input_gradient_through_the_attention(detach):
    # Kernel zeroed and per-branch BN shifts that differ: the output depends on x only through
    # the attention, so any input gradient must have come through it.
    layer = _layer(detach_attention=detach)
    with torch.no_grad():
        layer.weight.zero_()
        for k, bn in enumerate(layer.norms):
            bn.bias.fill_(float(k))
    x = torch.randn(1, 4, 11, 11, 11, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.att1.weight.grad.abs().sum() > 0  # the attention convs still learn
    if detach:
        assert x.grad is None or x.grad.abs().max() == 0
    else:
        assert x.grad.abs().max() > 0


def test_channels_last_input_gives_the_same_output():
    layer = _layer()
    layer.keep_attention = True
    x = torch.randn(2, 4, 12, 12, 12)
    expected = layer(x)
    got = layer(x.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected)


def test_capture_attention_names_layers_in_forward_order_and_restores_flags():
    net = build_network("AFN2", 1, 2, channels=(2,) * 8).eval()
    layers = [m for m in net.modules() if isinstance(m, AutofocusConv)]
    with capture_attention(net) as maps:
        assert all(m.keep_attention for m in layers)
        net(torch.randn(1, 1, 31, 31, 31))
    assert not any(m.keep_attention for m in layers)
    geometry = net.autofocus_geometry()
    assert list(maps) == ["AF1", "AF2"] == [g["name"] for g in geometry]
    for g in geometry:
        size = 31 - 2 * g["offset"]  # the attention grid sits at `offset` from the input edge
        assert maps[g["name"]].shape == (1, 4, size, size, size)
    assert [g["offset"] for g in geometry] == [12, 14]


def _stack(dims=3):
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    torch.manual_seed(1)
    return nn.Sequential(
        conv(2, 6, 3, padding=1), nn.ReLU(), conv(6, 4, 3, padding=1), nn.ReLU(), conv(4, 3, 1)
    )


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_override_attention_forces_one_layer_and_always_restores_it():
    from napari_autofocus.errors import AutofocusError
    from napari_autofocus.nets.autofocus import override_attention

    model = build_network("AFN2", 2, 3, channels=(4,) * 8).eval()
    first, second = (m for _, m in model.named_modules() if isinstance(m, AutofocusConv))
    second.attention_override = "uniform"  # already forced by someone: it comes back as it was
    with override_attention(model, "AF2", 3) as module:
        assert module is second and second.attention_override == 3 and first.attention_override is None
    assert second.attention_override == "uniform"
    with pytest.raises(RuntimeError), override_attention(model, "AF1", 0):
        assert first.attention_override == 0
        raise RuntimeError("a run that fails half-way")
    assert first.attention_override is None
    with (
        pytest.raises(AutofocusError, match="no autofocus layer 'AF3'.*AF1, AF2"),
        override_attention(model, "AF3", 0),
    ):
        pass


@pytest.mark.parametrize("dims", [2, 3])
def test_autofocusify_adds_exactly_the_attention_parameters(dims):
    model = _stack(dims)
    before = _count(model)
    autofocusify(model, ["0", "2"])
    k3 = 27 if dims == 3 else 9
    attention = (2 * 1 * k3 + 1) + (1 * 4 + 4) + (6 * 3 * k3 + 3) + (3 * 4 + 4)
    assert _count(model) == before + attention
    assert isinstance(model[0], AutofocusConv) and isinstance(model[2], AutofocusConv)

    with_norms = autofocusify(_stack(dims), "2", branch_norm=True)
    assert _count(with_norms) == before + (6 * 3 * k3 + 3) + (3 * 4 + 4) + 4 * 2 * 4


def test_autofocusify_copies_the_kernel_so_the_matching_branch_reproduces_the_model():
    model = _stack().eval()
    x = torch.randn(1, 2, 9, 9, 9)
    expected = model(x)
    autofocusify(
        model, lambda name, m: isinstance(m, nn.Conv3d) and m.kernel_size == (3, 3, 3), dilations=(1, 2, 3)
    )
    for m in model.modules():
        if isinstance(m, AutofocusConv):
            m.attention_override = 0  # the rate-1 branch = the original conv
    torch.testing.assert_close(model(x), expected)


def test_autofocusify_refuses_what_it_cannot_convert():
    model = nn.Sequential(nn.Conv3d(2, 2, 3, stride=2), nn.Conv3d(2, 2, 3, groups=2), nn.ReLU())
    with pytest.raises(SurgeryError, match="stride"):
        autofocusify(model, "0")
    with pytest.raises(SurgeryError, match="grouped"):
        autofocusify(model, "1")
    with pytest.raises(SurgeryError, match="not a Conv2d/Conv3d"):
        autofocusify(model, "2")
    with pytest.raises(SurgeryError, match="no sub-module"):
        autofocusify(model, "7")
