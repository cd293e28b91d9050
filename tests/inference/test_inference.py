"""Whole-volume engine: exact tiling, alignment of attention maps, ROI skipping, cancel."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from repo_paths import REPO
from torch import nn

from napari_autofocus.inference import Cancelled, make_plan, predict_volume
from napari_autofocus.inference.tiling import plan_tiles
from napari_autofocus.nets import AutofocusConv, build_network, capture_attention

TINY = (4, 4, 4, 4, 4, 4, 4, 4)


def _randomize_bn(model, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1 + 0.05)
    for p in model.parameters():
        if p.dim() == 5:
            p.data.normal_(0, scale, generator=g)
    return model.eval()


def _whole_volume_pass(model, image, pad_value=0.0):
    """Log-probabilities and attention of ``model(x)`` on the whole margin-padded volume, cropped
    to the volume's grid (DM's input is padded on to its multiple of three)."""
    m, multiple = model.margin, getattr(model, "input_multiple", 1)
    pads = [(m, m + (-(n + 2 * m)) % multiple) for n in image.shape[1:]]
    padded = np.pad(image, [(0, 0), *pads], constant_values=pad_value)
    with torch.no_grad(), capture_attention(model) as captured:
        logits = model(torch.from_numpy(padded)[None])[0]
    grid = tuple(slice(0, n) for n in image.shape[1:])
    attention = {}
    for g in model.autofocus_geometry():
        c = m - g["offset"]
        attention[g["name"]] = captured[g["name"]][0].numpy()[
            (slice(None), *(slice(c, c + n) for n in image.shape[1:]))
        ]
    return logits.numpy()[(slice(None), *grid)], attention


def _model(arch, seed=0):
    options = {"fc_channels": (8, 8)} if arch == "DM" else {}
    return _randomize_bn(build_network(arch, 2, 3, channels=TINY, **options), seed, scale=0.15)


def _assert_same_as_one_pass(pred, expected_logits, expected_attention):
    np.testing.assert_array_equal(pred.labels, expected_logits.argmax(0))
    assert np.abs(pred.logits - expected_logits).max() <= 1e-4
    expected_probabilities = torch.softmax(torch.from_numpy(expected_logits), 0).numpy()
    np.testing.assert_allclose(pred.probabilities, expected_probabilities, atol=3e-5)
    assert set(pred.attention) == set(expected_attention)
    for name, a in expected_attention.items():
        assert a.std() > 1e-3  # not flat, so a misplacement or a seam would show
        assert np.abs(pred.attention[name] - a).max() <= 1e-4, name


ARCHS = ["BASIC", "AFN1", "AFN6", "ASPP_C", "ASPP_S", "DM"]


@pytest.mark.parametrize("arch", ARCHS)
def test_whole_mode_equals_one_forward_pass_over_the_volume(arch):
    model = _model(arch)
    image = np.random.default_rng(1).normal(size=(2, 23, 31, 17)).astype(np.float32)
    expected = _whole_volume_pass(model, image)
    pred = predict_volume(
        model,
        image,
        crop=False,
        probabilities=True,
        logits=True,
        attention=True,
        attention_dtype=np.float32,
        device="cpu",
    )
    assert pred.mode == ("tiled" if arch == "DM" else "whole")  # DM is all-valid: its tiles are exact
    assert pred.crop_box == ((0, 23), (0, 31), (0, 17)) and pred.computed.all()
    _assert_same_as_one_pass(pred, *expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_cropped_run_equals_one_pass_over_the_cropped_volume(arch):
    """Default crop: the foreground's box plus the margin read from real data, one pass over it."""
    model = _model(arch, seed=3)
    rng = np.random.default_rng(2)
    image = np.zeros((2, 30, 26, 33), np.float32)
    image[:, 5:22, 9:20, 4:31] = rng.normal(size=(2, 17, 11, 27))
    box = ((5, 22), (9, 20), (4, 31))
    pred = predict_volume(
        model,
        image,
        probabilities=True,
        logits=True,
        attention=True,
        attention_dtype=np.float32,
        device="cpu",
    )
    assert pred.crop_box == box
    inside = tuple(slice(a, b) for a, b in box)
    expected_logp, expected_att = _one_pass_on_box(model, image, box)
    _assert_same_as_one_pass(_Sub(pred, inside), expected_logp, expected_att)
    outside = ~pred.computed
    assert pred.computed[inside].all() and outside.sum() == pred.computed.size - np.prod(
        [b - a for a, b in box]
    )
    assert (pred.labels[outside] == 0).all() and (pred.probabilities[0][outside] == 1).all()
    for a in pred.attention.values():
        assert np.isnan(a[:, outside]).all()


def _one_pass_on_box(model, image, box):
    """model(x) over ``box`` of ``image`` with the margin read from real data around it, zeros
    where the margin leaves the image (what the engine computes for a cropped run)."""
    m = model.margin
    region = image[(slice(None), *(slice(max(a - m, 0), b + m) for a, b in box))]
    extents = image.shape[1:]
    pads = [
        (m - (a - max(a - m, 0)), m - (min(b + m, n) - b)) for (a, b), n in zip(box, extents, strict=True)
    ]
    return _one_pass_on_source(model, np.pad(region, [(0, 0), *pads]))


def _one_pass_on_source(model, source):
    """model(x) on an input that already carries its margin (DM: padded on to a multiple of 3)."""
    multiple, m = getattr(model, "input_multiple", 1), model.margin
    padded = np.pad(source, [(0, 0)] + [(0, (-n) % multiple) for n in source.shape[1:]])
    out = tuple(slice(0, n - 2 * m) for n in source.shape[1:])
    with torch.no_grad(), capture_attention(model) as captured:
        logits = model(torch.from_numpy(padded)[None])[0]
    attention = {}
    for g in model.autofocus_geometry():
        c = m - g["offset"]
        attention[g["name"]] = captured[g["name"]][0].numpy()[
            (slice(None), *(slice(c, c + s.stop) for s in out))
        ]
    return logits.numpy()[(slice(None), *out)], attention


class _Sub:
    """The part of a prediction inside a box, shaped like a prediction."""

    def __init__(self, pred, inside):
        self.labels = pred.labels[inside]
        self.probabilities = pred.probabilities[(slice(None), *inside)]
        self.logits = pred.logits[(slice(None), *inside)]
        self.attention = {n: a[(slice(None), *inside)] for n, a in pred.attention.items()}


def _two_distant_blobs():
    image = np.zeros((2, 44, 36, 34), np.float32)
    rng = np.random.default_rng(7)
    image[:, 2:9, 3:11, 2:9] = rng.normal(size=(2, 7, 8, 7))
    image[:, 30:40, 24:33, 23:31] = rng.normal(size=(2, 10, 9, 8))
    return image


def _hollow_shell():
    shape = (36, 34, 32)
    radius = np.sqrt(sum((g - (n - 1) / 2) ** 2 for g, n in zip(np.indices(shape), shape, strict=True)))
    shell = (radius >= 7) & (radius <= 11)
    return np.where(shell, np.random.default_rng(8).normal(size=(2, *shape)), 0).astype(np.float32)


def _bounding_box(mask):
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def _planes_hull(mask):
    """Per plane, the bounding box of the mask, filled."""
    hull = np.zeros_like(mask)
    for z, plane in enumerate(mask):
        ys, xs = np.flatnonzero(plane.any(1)), np.flatnonzero(plane.any(0))
        if ys.size:
            hull[z, ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1] = True
    return hull


@pytest.mark.parametrize("foreground", [_two_distant_blobs, _hollow_shell], ids=["two-blobs", "hollow-shell"])
@pytest.mark.parametrize("arch", ARCHS)
def test_whole_mode_computes_the_foregrounds_planes_exactly_and_nothing_else(arch, foreground):
    """Outputs on the foreground's box in each plane equal one pass over the cropped volume; each
    layer computes only what those need (two blobs far apart; a shell whose inside is empty)."""
    model = _model(arch, seed=5)
    image = foreground()
    mask = (image != 0).any(0)
    box = _bounding_box(mask)
    options = {"probabilities": True, "logits": True, "attention": True, "attention_dtype": np.float32}
    options["memory_budget_gib"] = 0.01  # slabs of a few planes, activations in files: boxes of all sizes
    pred = predict_volume(model, image, device="cpu", **options)
    assert pred.mode == "tiled" or pred.activations == "file"
    wanted = _planes_hull(mask)
    np.testing.assert_array_equal(pred.computed, wanted)
    inside = tuple(slice(a, b) for a, b in box)
    keep = wanted[inside]
    expected_logits, expected_attention = _one_pass_on_box(model, image, box)
    np.testing.assert_array_equal(pred.labels[inside][keep], expected_logits.argmax(0)[keep])
    assert np.abs(pred.logits[(slice(None), *inside)][:, keep] - expected_logits[:, keep]).max() <= 1e-4
    for name, a in expected_attention.items():
        assert np.abs(pred.attention[name][(slice(None), *inside)][:, keep] - a[:, keep]).max() <= 1e-4, name
        assert np.isnan(pred.attention[name][:, ~wanted]).all()
    assert (pred.labels[~wanted] == 0).all() and (pred.probabilities[0][~wanted] == 1).all()
    assert np.isnan(pred.logits[:, ~wanted]).all()
    whole_box = predict_volume(model, image, device="cpu", regions=False, **options)
    assert whole_box.computed[inside].all()
    np.testing.assert_array_equal(whole_box.labels[wanted], pred.labels[wanted])
    if arch != "DM" and foreground is _two_distant_blobs:  # streamed: layers skip what no output needs
        assert pred.flops <= whole_box.flops
        if arch == "BASIC":  # a short reach: its later layers skip the space between the blobs
            assert pred.flops < 0.8 * whole_box.flops


def test_the_margin_comes_from_real_data_around_the_crop():
    """For BASIC (all-valid) cropping changes nothing inside the box: the margin is real data."""
    model = _model("BASIC")
    image = np.random.default_rng(4).normal(size=(2, 30, 30, 30)).astype(np.float32)
    roi = np.zeros(image.shape[1:], bool)
    roi[10:20, 8:21, 12:25] = True
    cropped = predict_volume(model, image, roi=roi, probabilities=True, device="cpu")
    full = predict_volume(model, image, crop=False, probabilities=True, device="cpu")
    inside = cropped.computed
    assert inside.sum() == 10 * 13 * 13
    np.testing.assert_allclose(cropped.probabilities[:, inside], full.probabilities[:, inside], atol=1e-5)


def test_outputs_do_not_depend_on_the_memory_budget():
    """A budget too small to hold activations moves them to a file and thins the slabs; same outputs."""
    model = _model("AFN6", seed=5)
    image = np.random.default_rng(6).normal(size=(2, 40, 33, 29)).astype(np.float32)
    kwargs = dict(crop=False, probabilities=True, attention=True, attention_dtype=np.float32, device="cpu")
    roomy = predict_volume(model, image, memory_budget_gib=8.0, **kwargs)
    tight = predict_volume(model, image, memory_budget_gib=0.002, **kwargs)
    assert (roomy.activations, tight.activations) == ("memory", "file")
    assert tight.slabs_run > roomy.slabs_run
    np.testing.assert_array_equal(tight.labels, roomy.labels)
    np.testing.assert_allclose(tight.probabilities, roomy.probabilities, atol=1e-6)
    for name, a in roomy.attention.items():
        np.testing.assert_allclose(tight.attention[name], a, atol=1e-6)


def test_one_pass_gives_what_streaming_gives():
    """The CUDA path (one pass when it fits) checked on the CPU against per-layer streaming."""
    model = _model("AFN1", seed=7)
    image = np.random.default_rng(8).normal(size=(2, 21, 18, 25)).astype(np.float32)
    kwargs = dict(probabilities=True, attention=True, attention_dtype=np.float32, device="cpu")
    streamed = predict_volume(model, image, **kwargs)
    single = predict_volume(model, image, one_pass=True, **kwargs)
    assert single.slabs_run == 0 and single.tiles_run == 1 and streamed.slabs_run > 1
    np.testing.assert_array_equal(single.labels, streamed.labels)
    np.testing.assert_allclose(single.probabilities, streamed.probabilities, atol=1e-5)
    np.testing.assert_allclose(single.attention["AF1"], streamed.attention["AF1"], atol=1e-5)


@pytest.mark.parametrize("shape", [(23, 31, 17), (9, 40, 13)])
def test_tiled_basic_equals_one_whole_volume_pass(shape):
    model = _randomize_bn(build_network("BASIC", 2, 3, channels=TINY))
    image = np.random.default_rng(1).normal(size=(2, *shape)).astype(np.float32)
    logits, _ = _whole_volume_pass(model, image)
    logp = torch.log_softmax(torch.from_numpy(logits), 0).numpy()
    pred = predict_volume(model, image, mode="tiled", tile_size=7, probabilities=True, device="cpu")
    assert pred.tiles_run == len(make_plan(model, shape, tile_size=7).tiles) > 8
    np.testing.assert_allclose(pred.probabilities, np.exp(logp), atol=2e-5)
    np.testing.assert_array_equal(pred.labels, logp.argmax(0))
    assert pred.labels.shape == shape


def test_volume_smaller_than_one_patch():
    model = _randomize_bn(build_network("BASIC", 2, 3, channels=TINY))
    image = np.random.default_rng(2).normal(size=(2, 3, 5, 4)).astype(np.float32)
    pred = predict_volume(model, image, probabilities=True, device="cpu")
    assert pred.labels.shape == (3, 5, 4) and pred.slabs_run >= 1
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    logp, _ = _whole_volume_pass(model, image)
    np.testing.assert_array_equal(pred.labels, logp.argmax(0))


def test_deepmedic_odd_sizes_respect_its_multiple_of_three():
    model = _randomize_bn(build_network("DM", 1, 2, channels=TINY, fc_channels=(8, 8)))
    image = np.random.default_rng(3).normal(size=(1, 10, 14, 7)).astype(np.float32)
    pred = predict_volume(model, image, mode="tiled", tile_size=5, device="cpu")
    assert pred.labels.shape == (10, 14, 7)
    assert all(t % 3 == 0 for t in pred.tile_size)  # input tiles


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
        _MarkerNet(), image, crop=False, tile_size=4, attention=True, attention_dtype=np.float32, device="cpu"
    )
    expected = np.where(image[0] > 0, 1 / (1 + np.exp(-6.0)), 0.5)
    np.testing.assert_allclose(pred.attention["AF1"][0], expected, atol=1e-6)


def test_an_empty_roi_computes_nothing():
    model = _model("AFN1")
    image = np.random.default_rng(6).normal(size=(2, 12, 12, 12)).astype(np.float32)
    pred = predict_volume(model, image, roi=np.zeros((12, 12, 12), bool), attention=True, device="cpu")
    assert pred.crop_box is None and not pred.computed.any() and (pred.labels == 0).all()
    assert np.isnan(pred.attention["AF1"].astype(np.float32)).all()


def test_an_all_zero_volume_is_computed_whole():
    """Nothing non-zero to crop to (an unmasked scan of zeros): the whole volume is computed."""
    pred = predict_volume(_model("BASIC"), np.zeros((2, 9, 8, 7), np.float32), device="cpu")
    assert pred.crop_box == ((0, 9), (0, 8), (0, 7)) and pred.computed.all()


@pytest.mark.parametrize("mode", ["whole", "tiled"])
def test_cancel_stops_within_one_step_and_returns_nothing(mode):
    model = _model("AFN1")
    image = np.random.default_rng(9).normal(size=(2, 20, 20, 20)).astype(np.float32)
    stop = threading.Event()
    seen = []

    def progress(done, total):
        seen.append((done, total))
        if done >= 1:  # the first report (0 of N) comes before any step
            stop.set()

    with pytest.raises(Cancelled, match="cancelled after 1 of"):
        predict_volume(
            model,
            image,
            mode=mode,
            tile_size=7,
            memory_budget_gib=0.002,
            progress=progress,
            cancel=stop,
            device="cpu",
        )
    assert seen == [(0, seen[0][1]), (1, seen[0][1])] and seen[0][1] > 4


def test_reference_mode_uses_the_references_47_voxel_tiles():
    model = build_network("AFN1", 2, 3, channels=TINY)
    plan = make_plan(model, (100, 60, 47), mode="reference")
    assert plan.tile_size == (47, 47, 47)
    assert plan.input_tile_size == (75, 75, 75)
    assert len(plan.tiles) == 3 * 2 * 1


def test_reference_mode_reproduces_the_authors_tile_placement():
    """segment() in the authors' test.py: box of the mask, ceil((max - min) / 47) tiles per axis from
    its corner (so a box of 48 voxels gets one tile and loses its last plane), 75^3 inputs cut from
    a zero-padded array around the box, logits stitched, background elsewhere."""
    model = _model("AFN1", seed=11)
    rng = np.random.default_rng(12)
    image = np.zeros((2, 70, 110, 60), np.float32)
    box = ((10, 58), (3, 100), (20, 45))  # max - min = 47, 96, 24 -> 1, 3, 1 tiles
    image[(slice(None), *(slice(a, b) for a, b in box))] = rng.normal(size=(2, 48, 97, 25))
    pred = predict_volume(model, image, mode="reference", probabilities=True, attention=True, device="cpu")

    lo = [a for a, _ in box]
    counts = [int(np.ceil((b - 1 - a) / 47)) for a, b in box]
    assert counts == [1, 3, 1] and pred.tiles_run == 3
    array = np.zeros((2, *(c * 47 + 28 for c in counts)), np.float32)
    src = tuple(
        slice(max(a - 14, 0), min(a - 14 + c * 47 + 28, n))
        for a, c, n in zip(lo, counts, image.shape[1:], strict=True)
    )
    dst = tuple(slice(s.start - (a - 14), s.stop - (a - 14)) for s, a in zip(src, lo, strict=True))
    array[(slice(None), *dst)] = image[(slice(None), *src)]
    expected = np.zeros((3, *image.shape[1:]), np.float32)
    expected[0] = 1.0
    for i in range(counts[0]):
        for j in range(counts[1]):
            for k in range(counts[2]):
                t = (i * 47, j * 47, k * 47)
                tile = array[(slice(None), *(slice(s, s + 75) for s in t))]
                with torch.no_grad():
                    p = torch.softmax(model(torch.from_numpy(np.ascontiguousarray(tile))[None])[0], 0).numpy()
                ends = [min(a + s + 47, n) for a, s, n in zip(lo, t, image.shape[1:], strict=True)]
                out = tuple(slice(a + s, e) for a, s, e in zip(lo, t, ends, strict=True))
                expected[(slice(None), *out)] = p[(slice(None), *(slice(0, o.stop - o.start) for o in out))]
    np.testing.assert_allclose(pred.probabilities, expected, atol=2e-5)
    np.testing.assert_array_equal(pred.labels, expected.argmax(0))
    assert not pred.computed[57].any() and pred.computed[56].any()  # the authors' off-by-one
    assert np.isnan(pred.attention["AF1"][0, 57].astype(np.float32)).all()


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


def test_unknown_or_unsupported_precision_is_a_clear_error(monkeypatch):
    from napari_autofocus.errors import AutofocusError

    model, image = _model("BASIC"), np.ones((2, 20, 20, 20), np.float32)
    with pytest.raises(AutofocusError, match="unknown precision 'fp16'; expected one of fp32, bf16"):
        predict_volume(model, image, device="cpu", precision="fp16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    with pytest.raises(AutofocusError, match="this CPU has no native bf16"):
        predict_volume(model, image, device="cpu", precision="bf16")


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(), reason="this CPU has no native bf16")
@pytest.mark.parametrize("arch", ["BASIC", "AFN1"])
def test_bf16_stays_close_to_fp32_and_large_dilations_stay_fp32(arch):
    model = _model(arch, seed=2)
    image = np.random.default_rng(3).normal(size=(2, 26, 24, 22)).astype(np.float32)
    options = {"device": "cpu", "logits": True, "attention": True, "attention_dtype": np.float32}
    fp32 = predict_volume(model, image, **options)
    bf16 = predict_volume(model, image, precision="bf16", **options)
    scale = np.abs(fp32.logits).max()
    assert 0 < np.abs(bf16.logits - fp32.logits).max() <= 0.05 * scale  # bf16 ran, and stayed close
    assert (bf16.labels == fp32.labels).mean() >= 0.98
    for name, a in fp32.attention.items():
        assert np.abs(bf16.attention[name] - a).max() <= 0.05, name


def test_activation_file_reads_any_slab_with_zeros_beyond_the_volume(tmp_path):
    from napari_autofocus.inference.activation_stores import FileStore

    data = torch.randn(1, 2, 10, 3, 4)
    store = FileStore(str(tmp_path), 2, (10, 3, 4), torch.device("cpu"))
    store.write(0, data[:, :, :6])
    store.write(6, data[:, :, 6:])
    padded = torch.nn.functional.pad(data, (0, 0, 0, 0, 5, 5))  # 5 zero planes before and after
    for lo, hi in [(-3, 4), (-1, 6), (2, 9), (5, 13), (3, 8), (9, 15), (12, 14), (-5, 15), (0, 1), (4, 11)]:
        torch.testing.assert_close(store.read(lo, hi), padded[:, :, lo + 5 : hi + 5], rtol=0, atol=0)
    store.close()


def test_memory_store_gives_read_planes_back_and_reads_across_the_border(tmp_path):
    from napari_autofocus.inference.activation_stores import MemoryStore

    data = torch.randn(1, 8, 64, 64, 64).contiguous(memory_format=torch.channels_last_3d)
    store = MemoryStore(data.clone(memory_format=torch.channels_last_3d))
    padded = torch.nn.functional.pad(data, (0, 0, 0, 0, 3, 3))
    for lo, hi in [(-3, 5), (10, 20), (60, 67), (-2, 66)]:
        torch.testing.assert_close(store.read(lo, hi), padded[:, :, lo + 3 : hi + 3], rtol=0, atol=0)
    if not store.can_release:
        pytest.skip("no madvise here")
    store.release(32)  # planes no step reads again are handed back: they read as zeros now
    assert store.data[:, :, 1:31].abs().max() == 0  # whole pages only: the first and last may stay
    torch.testing.assert_close(store.read(33, 64), data[:, :, 33:], rtol=0, atol=0)


@pytest.mark.slow
def test_the_bundled_afn6_shows_no_tile_seams_on_the_sample():
    """The engine artefact the default removes: on the sample, tiles of 30^3 put seams in the
    expected rate at their borders (the score catches them); the whole mode has none there. A
    central 60^3 box of the head keeps the test short: one border plane per axis, where one layer's
    score also moves with the anatomy that happens to lie there, so layers are averaged."""
    from napari_autofocus.analysis.attention_maths import expected_rate, seam_score
    from napari_autofocus.app.model_library import bundled_models
    from napari_autofocus.inference.predictor import preprocess
    from napari_autofocus.io.nifti import load_multichannel
    from napari_autofocus.nets import load_model

    path = next(e.path for e in bundled_models() if Path(e.path).name == "AFN6_phantom.safetensors")
    model, card = load_model(path)
    raw, _ = load_multichannel([REPO / "sample_data" / "phantom" / "imagesTr" / "phantom_09000.nii.gz"])
    prepared = preprocess(raw, (1.0, 1.0, 1.0), card.normalization)
    image = prepared.image
    kwargs = dict(roi=((17, 77), (19, 79), (18, 78)), attention=True, device="cpu")
    whole = predict_volume(model, image, **kwargs)
    tiled = predict_volume(model, image, mode="tiled", tile_size=30, **kwargs)
    assert whole.crop_box == tiled.crop_box and whole.mode == "whole"
    inside = tuple(slice(a, b) for a, b in whole.crop_box)
    borders = [list(range(30, b - a, 30)) for a, b in whole.crop_box]  # where the tiles meet
    scores = {}
    for name in whole.attention:
        for run, pred in (("whole", whole), ("tiled", tiled)):
            rate = expected_rate(pred.attention[name][(slice(None), *inside)], pred.rates[name])
            scores[run, name] = seam_score(rate, borders)
    mean = {run: np.mean([scores[run, n] for n in whole.attention]) for run in ("whole", "tiled")}
    assert mean["whole"] <= 1.2 and mean["tiled"] > mean["whole"] + 0.2, scores


def test_same_padding_networks_stream_exactly_too():
    """The size-preserving variant pads every conv by itself: zeros at the volume border only."""
    model = _randomize_bn(build_network("AFN2", 2, 3, channels=TINY, padding="same"), 13, scale=0.15)
    image = np.random.default_rng(14).normal(size=(2, 19, 23, 16)).astype(np.float32)
    expected = _whole_volume_pass(model, image)
    kwargs = dict(crop=False, probabilities=True, logits=True, attention=True, attention_dtype=np.float32)
    pred = predict_volume(model, image, device="cpu", **kwargs)
    assert pred.mode == "whole" and model.margin == 0
    _assert_same_as_one_pass(pred, *expected)
