"""Whole-volume engine: exact tiling, alignment of attention maps, ROI skipping, cancel."""

import threading

import numpy as np
import pytest
import torch
from torch import nn

from napari_autofocus.inference import Cancelled, make_plan, predict_volume
from napari_autofocus.inference.tiling import plan_tiles
from napari_autofocus.nets import AutofocusConv, build_network

TINY = (4, 4, 4, 4, 4, 4, 4, 4)


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1 + 0.05)
    for p in model.parameters():
        if p.dim() == 5:
            p.data.normal_(0, 0.3, generator=g)
    return model.eval()


def _whole_volume_logits(model, image, pad_value=0.0):
    m = model.margin
    padded = np.pad(image, [(0, 0)] + [(m, m)] * 3, constant_values=pad_value)
    with torch.no_grad():
        return model(torch.from_numpy(padded)[None])[0].numpy()


@pytest.mark.parametrize("shape", [(23, 31, 17), (9, 40, 13)])
def test_tiled_basic_equals_one_whole_volume_pass(shape):
    torch.manual_seed(0)
    model = _randomize_bn(build_network("BASIC", 2, 3, channels=TINY))
    image = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    whole = _whole_volume_logits(model, image)
    expected = torch.softmax(torch.from_numpy(whole), 0).numpy()
    pred = predict_volume(model, image, tile_size=7, probabilities=True, device="cpu")
    assert pred.tiles_run == len(make_plan(model, shape, tile_size=7).tiles) > 8
    np.testing.assert_allclose(pred.probabilities, expected, atol=2e-5)
    np.testing.assert_array_equal(pred.labels, whole.argmax(0))
    assert pred.labels.shape == shape


def test_volume_smaller_than_one_patch():
    model = _randomize_bn(build_network("BASIC", 2, 3, channels=TINY))
    image = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype(np.float32)
    pred = predict_volume(model, image, probabilities=True, device="cpu")
    assert pred.labels.shape == (3, 5, 4) and pred.tiles_run == 1
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    whole = _whole_volume_logits(model, image)
    np.testing.assert_array_equal(pred.labels, whole.argmax(0))


def test_deepmedic_odd_sizes_respect_its_multiple_of_three():
    model = _randomize_bn(build_network("DM", 1, 2, channels=TINY, fc_channels=(8, 8)))
    image = np.random.default_rng(3).normal(size=(1, 10, 14, 7)).astype(np.float32)
    pred = predict_volume(model, image, tile_size=5, device="cpu")
    assert pred.labels.shape == (10, 14, 7)
    assert all((t + 2 * model.margin) % 3 == 0 for t in pred.tile_size)


def test_attention_of_afn1_is_placed_on_the_input_grid():
    """AFN1's only autofocus layer follows all-valid layers, so its attention is translation
    equivariant: the stitched tiled map must equal one whole-volume pass shifted by the layer offset."""
    model = _randomize_bn(build_network("AFN1", 2, 3, channels=TINY), seed=4)
    for m in model.modules():
        if isinstance(m, AutofocusConv):
            m.att2.weight.data.normal_(0, 2.0)
    shape = (15, 22, 11)
    image = np.random.default_rng(5).normal(size=(2, *shape)).astype(np.float32)
    pred = predict_volume(model, image, tile_size=6, attention=True, attention_dtype=np.float32, device="cpu")
    [geometry] = model.autofocus_geometry()
    m, offset = model.margin, geometry["offset"]
    padded = np.pad(image, [(0, 0)] + [(m, m)] * 3)
    from napari_autofocus.nets import capture_attention

    with torch.no_grad(), capture_attention(model) as captured:
        model(torch.from_numpy(padded)[None])
    crop = m - offset
    whole = captured["AF1"][0].numpy()[(slice(None), *(slice(crop, crop + n) for n in shape))]
    assert pred.attention["AF1"].shape == (4, *shape)
    np.testing.assert_allclose(pred.attention["AF1"], whole, atol=1e-5)
    assert whole.std() > 0.01  # the map is not flat, so a misplacement would show
    np.testing.assert_allclose(pred.attention["AF1"].sum(0), 1.0, atol=1e-5)


class _MarkerNet(nn.Module):
    """One valid autofocus conv whose attention is a known function of the input voxel itself."""

    margin, input_multiple, in_channels, num_classes = 2, 1, 1, 2
    receptive_field_min = 5

    def __init__(self):
        super().__init__()
        self.af = AutofocusConv(1, 2, dilations=(2, 6), branch_norm=False, attention_hidden=1)
        with torch.no_grad():
            self.af.att1.weight.zero_()
            self.af.att1.weight[0, 0, 1, 1, 1] = 1.0  # hidden = relu(x at the same voxel)
            self.af.att1.bias.zero_()
            self.af.att2.weight.copy_(torch.tensor([3.0, -3.0]).reshape(2, 1, 1, 1, 1))
            self.af.att2.bias.zero_()

    def autofocus_geometry(self):
        return [{"name": "AF1", "offset": 2, "rates": (2, 6), "kernel_size": 3}]

    def forward(self, x):
        return self.af(x)


def test_attention_lines_up_voxel_for_voxel_with_a_synthetic_marker():
    image = np.zeros((1, 20, 21, 22), np.float32)
    image[0, 3:6, 10:14, 15:21] = 1.0  # a bright box: attention to rate 2 is sigmoid(6) there, 0.5 elsewhere
    pred = predict_volume(
        _MarkerNet(), image, tile_size=4, attention=True, attention_dtype=np.float32, device="cpu"
    )
    expected = np.where(image[0] > 0, 1 / (1 + np.exp(-6.0)), 0.5)
    np.testing.assert_allclose(pred.attention["AF1"][0], expected, atol=1e-6)


def test_roi_skips_tiles_and_marks_them_not_computed():
    model = _randomize_bn(build_network("AFN1", 2, 3, channels=TINY))
    image = np.random.default_rng(6).normal(size=(2, 24, 24, 24)).astype(np.float32)
    box = ((0, 8), (0, 8), (0, 8))
    pred = predict_volume(model, image, tile_size=8, roi=box, attention=True, device="cpu")
    assert (pred.tiles_run, pred.tiles_skipped) == (1, 26)
    assert pred.computed[:8, :8, :8].all() and pred.computed.sum() == 8**3
    assert np.isnan(pred.attention["AF1"][:, 10:, :, :].astype(np.float32)).all()
    assert (pred.labels[~pred.computed] == 0).all()


def test_cancel_stops_within_one_tile_and_returns_nothing():
    model = _randomize_bn(build_network("BASIC", 2, 3, channels=TINY))
    image = np.zeros((2, 20, 20, 20), np.float32)
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        stop.set()

    with pytest.raises(Cancelled, match="cancelled after 1 of 27 tiles"):
        predict_volume(model, image, tile_size=7, progress=progress, cancel=stop, device="cpu")
    assert seen == [1]


def test_reference_mode_uses_the_references_47_voxel_tiles():
    model = build_network("AFN1", 2, 3, channels=TINY)
    plan = make_plan(model, (100, 60, 47), mode="reference")
    assert plan.tile_size == (47, 47, 47)
    assert plan.input_tile_size == (75, 75, 75)
    assert len(plan.tiles) == 3 * 2 * 1


def test_even_tiles_cover_exactly_with_little_waste():
    plan = plan_tiles((240, 240, 155), margin=14, max_tile=100)
    assert plan.tile_size == (80, 80, 78) and len(plan.tiles) == 18
    covered = np.zeros((240, 240, 156), int)
    for tile in plan.tiles:
        covered[tile.output_slices] += 1
    assert (covered[:, :, :155] == 1).all()


def test_memory_budget_bounds_the_tile():
    model = build_network("AFN6", 4, 5)
    small = make_plan(model, (240, 240, 155), memory_budget_gib=0.5)
    large = make_plan(model, (240, 240, 155), memory_budget_gib=4.0)
    assert max(small.input_tile_size) < max(large.input_tile_size)
    assert len(small.tiles) > len(large.tiles)


def test_wrong_channel_count_is_a_clear_error():
    from napari_autofocus.errors import AutofocusError

    model = build_network("BASIC", 4, 5, channels=TINY)
    with pytest.raises(AutofocusError, match="expects 4 input channel"):
        predict_volume(model, np.zeros((2, 10, 10, 10), np.float32), device="cpu")
