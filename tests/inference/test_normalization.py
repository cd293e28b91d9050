"""Intensity normalisation, checked directly: every scheme against a hand-written computation."""

import numpy as np
import pytest

from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.normalization import (
    masked_mean_std,
    normalize,
    padding_value,
    roi_mask,
)


def _scan(seed: int = 0) -> np.ndarray:
    """Two channels, zero outside a centred cube (a skull-stripped scan), some negative values."""
    rng = np.random.default_rng(seed)
    image = np.zeros((2, 12, 10, 8), np.float32)
    image[0, 2:10, 2:8, 1:7] = rng.normal(100, 20, (8, 6, 6))
    image[1, 2:10, 2:8, 1:7] = rng.normal(-5, 3, (8, 6, 6))
    return image


def test_zscore_gives_each_channel_zero_mean_unit_std_inside_the_roi_and_a_constant_outside():
    image = _scan()
    roi = roi_mask(image)
    assert roi.sum() == 8 * 6 * 6
    out = normalize(image, {"scheme": "zscore", "roi": "nonzero", "outside_value": -1.5})
    for c in range(2):
        inside = out[c][roi].astype(np.float64)
        assert abs(inside.mean()) < 1e-5 and abs(inside.std() - 1) < 1e-5
        expected = (image[c][roi] - image[c][roi].astype(np.float64).mean()) / image[c][roi].std()
        np.testing.assert_allclose(inside, expected, atol=1e-5)
        assert (out[c][~roi] == -1.5).all()
    assert out.dtype == np.float32 and out is not image and image[0, 0, 0, 0] == 0  # input untouched


def test_zscore_over_the_whole_image_and_in_place():
    image = _scan(1)
    expected = (image - image.mean(axis=(1, 2, 3), keepdims=True, dtype=np.float64)) / image.std(
        axis=(1, 2, 3), keepdims=True, dtype=np.float64
    )
    out = normalize(image, {"scheme": "zscore", "roi": "all"}, out=image)
    assert out is image  # big scans are normalised without a second copy
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_a_constant_channel_is_shifted_not_divided_by_zero():
    image = np.zeros((1, 4, 4, 4), np.float32)
    image[0, 1:3, 1:3, 1:3] = 7.0
    out = normalize(image)
    assert np.isfinite(out).all() and (out[0, 1:3, 1:3, 1:3] == 0).all()


def test_deepmedic_robust_follows_the_reference_routine():
    image = _scan(2)
    roi = roi_mask(image)
    out = normalize(image, {"scheme": "deepmedic-robust", "roi": "nonzero", "outside_value": None})
    for c in range(2):
        channel = np.clip(image[c], 0, None)  # negative values clipped to 0 first
        values = channel[roi]
        lo, hi = np.percentile(values, [5, 95])
        keep = (
            (values >= lo)
            & (values <= hi)
            & (np.abs(values - values.mean()) <= 3 * values.std())
            & (values > channel.mean())
        )
        chosen = values[keep] if keep.any() else values
        scale = chosen.std() if chosen.std() > 1e-8 else 1.0
        np.testing.assert_allclose(out[c], (channel - chosen.mean()) / scale, rtol=1e-5, atol=1e-5)
    # the whole image is normalised: outside the ROI stays one constant, below the ROI's values
    outside = out[0][~roi]
    assert np.unique(outside).size == 1 and outside[0] < out[0][roi].mean()
    # the second channel is mostly negative inside the ROI: clipped, those voxels equal the zeros outside
    negative = image[1] < 0
    assert negative.sum() > 100 and (out[1][negative] == out[1][~roi][0]).all()


def test_none_copies_the_data_unchanged():
    image = _scan(3)
    out = normalize(image, {"scheme": "none"})
    assert out is not image
    np.testing.assert_array_equal(out, image)


def test_masked_mean_std_matches_numpy_across_slab_borders():
    rng = np.random.default_rng(4)
    channel = rng.normal(3, 2, (37, 9, 5)).astype(np.float32)
    roi = rng.random((37, 9, 5)) > 0.4
    mean, std = masked_mean_std(channel, roi, planes=16)  # 37 planes: three slabs, the last short
    values = channel[roi].astype(np.float64)
    assert mean == pytest.approx(values.mean(), rel=1e-12) and std == pytest.approx(values.std(), rel=1e-10)
    assert masked_mean_std(channel, np.zeros_like(roi)) == (0.0, 1.0)


def test_an_all_zero_scan_uses_the_whole_volume_as_roi():
    assert roi_mask(np.zeros((2, 3, 3, 3), np.float32)).all()


def test_padding_value_is_what_lies_outside_the_roi():
    assert padding_value(None) == 0.0
    assert padding_value({"outside_value": -2}) == -2.0
    assert padding_value({"scheme": "deepmedic-robust", "outside_value": None}) == 0.0


@pytest.mark.parametrize(
    ("image", "spec", "kwargs", "message"),
    [
        (np.zeros((4, 4, 4), np.float32), {}, {}, r"expected a \(channels, D, H, W\) image"),
        (
            np.zeros((1, 4, 4, 4), np.float32),
            {"scheme": "minmax"},
            {},
            "unknown normalisation scheme 'minmax'",
        ),
        (np.ones((1, 4, 4, 4), np.float32), {"roi": "brain"}, {}, "unknown ROI rule 'brain'"),
        (np.ones((1, 4, 4, 4), np.float32), {}, {"out": np.zeros((1, 4, 4, 4))}, "out must be float32"),
    ],
)
def test_bad_input_is_refused_with_what_was_expected(image, spec, kwargs, message):
    with pytest.raises(AutofocusError, match=message):
        normalize(image, spec, **kwargs)
