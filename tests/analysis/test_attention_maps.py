"""Derived attention maps on hand-made attention."""

import numpy as np
import pytest

from napari_autofocus.analysis.attention_maths import (
    argmax_rate,
    expected_rate,
    mean_attention_per_class,
    normalized_entropy,
    zoom_mm,
    zoom_voxels,
)

RATES = (2, 6, 10, 14)


def _attention():
    a = np.zeros((4, 1, 1, 3), np.float32)
    a[:, 0, 0, 0] = [1, 0, 0, 0]  # all on r=2
    a[:, 0, 0, 1] = [0.25] * 4  # uniform
    a[:, 0, 0, 2] = [0, 0, 0.5, 0.5]
    return a


def test_argmax_expected_and_entropy():
    a = _attention()
    assert argmax_rate(a, RATES).ravel().tolist() == [2, 2, 10]
    np.testing.assert_allclose(expected_rate(a, RATES).ravel(), [2, 8, 12])
    np.testing.assert_allclose(normalized_entropy(a).ravel(), [0, 1, 0.5], atol=1e-6)


def test_zoom_adds_each_layers_expected_extra_dilation():
    a = _attention()
    zoom = zoom_voxels({"AF1": a, "AF2": a}, {"AF1": RATES, "AF2": RATES}, receptive_field_min=29)
    # per layer: 2 * (E[r] - 2) = 0, 12, 20
    np.testing.assert_allclose(zoom.ravel(), [29, 29 + 24, 29 + 40])
    np.testing.assert_allclose(zoom_mm(zoom, (2.0, 2.0, 2.0)).ravel(), 2 * zoom.ravel())


def test_nan_marks_not_computed_voxels():
    a = _attention()
    a[:, 0, 0, 2] = np.nan
    assert argmax_rate(a, RATES).ravel().tolist() == [2, 2, 0]
    assert np.isnan(normalized_entropy(a)[0, 0, 2])


def test_mean_attention_per_class():
    a = _attention()
    labels = np.array([[[1, 1, 2]]])
    means = mean_attention_per_class(a, labels, [0, 1, 2])
    assert set(means) == {1, 2}
    np.testing.assert_allclose(means[1], [0.625, 0.125, 0.125, 0.125])


def test_seam_score_finds_jumps_at_tile_borders_and_not_elsewhere():
    from scipy import ndimage

    from napari_autofocus.analysis.attention_maths import seam_score

    rng = np.random.default_rng(0)
    smooth = ndimage.gaussian_filter(rng.normal(0, 1, size=(40, 30, 20)), 2).astype(np.float32) + 6
    borders = [[10, 20, 30], [15], []]
    assert 0.5 < seam_score(smooth, borders) < 1.5
    seamed = smooth.copy()
    seamed[20:] += 1.0  # a tile computed differently from plane 20 on
    assert seam_score(seamed, borders) > 5
    outside = smooth.copy()
    outside[:5] = np.nan  # planes not computed are left out, not counted as jumps
    assert 0.5 < seam_score(outside, borders) < 1.5
    with pytest.raises(ValueError, match="no computed border"):
        seam_score(smooth, [[], [], []])
