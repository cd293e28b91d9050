"""Intensity normalisation shared by training and inference, described by the model card.

The paper normalises each scan so that intensities inside the brain (the region of interest) have
zero mean and unit variance per channel. Everything outside the ROI is set to a constant
``outside_value`` (0 by default): after normalisation that is the ROI mean, which is also the value
the inference engine pads volumes with, so tiles at the border see what training patches saw.

Schemes (``card.normalization["scheme"]``):
- ``"zscore"``: per image and channel, mean/std over the ROI (``roi``: ``"nonzero"`` = voxels where
  any channel is non-zero, as in skull-stripped MRI; ``"all"`` = the whole image).
- ``"deepmedic-robust"``: the reference's DeepMedic routine: negative values clipped to 0, then
  mean/std over ROI voxels that lie within the ROI's 5th-95th percentiles, within mean +- 3 std and
  above the whole-image mean; the whole image is normalised (outside stays a negative constant).
- ``"none"``: the data is already normalised.
No torch: the plugin normalises before it decides whether a model is needed.
"""

from __future__ import annotations

import numpy as np

from napari_autofocus.errors import AutofocusError

DEFAULT_NORMALIZATION = {"scheme": "zscore", "roi": "nonzero", "outside_value": 0.0}
SCHEMES = ("zscore", "deepmedic-robust", "none")


def roi_mask(image: np.ndarray, roi: str = "nonzero") -> np.ndarray:
    """(D, H, W) boolean region of interest of a (C, D, H, W) image."""
    if roi == "all":
        return np.ones(image.shape[1:], dtype=bool)
    if roi == "nonzero":
        mask = np.zeros(image.shape[1:], dtype=bool)
        for channel in image:  # one channel at a time: no (C, D, H, W) temporary
            mask |= channel != 0
        return mask if mask.any() else np.ones(image.shape[1:], dtype=bool)
    raise AutofocusError(f"unknown ROI rule {roi!r}; expected 'nonzero' or 'all'")


def normalize(
    image: np.ndarray, spec: dict | None = None, mask: np.ndarray | None = None, out: np.ndarray | None = None
) -> np.ndarray:
    """Normalise a (C, D, H, W) image per channel as ``spec`` says; returns a new float32 array,
    or ``out`` (which may be ``image`` itself: big scans are then normalised in place)."""
    spec = {**DEFAULT_NORMALIZATION, **(spec or {})}
    scheme = spec.get("scheme", "zscore")
    if image.ndim != 4:
        raise AutofocusError(f"expected a (channels, D, H, W) image, got shape {image.shape}")
    if scheme not in SCHEMES:
        raise AutofocusError(f"unknown normalisation scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    if out is None:
        out = np.empty(image.shape, dtype=np.float32)
    elif out.dtype != np.float32 or out.shape != image.shape:
        raise AutofocusError(f"normalize: out must be float32 of shape {image.shape}")
    if scheme == "none":
        if out is not image:
            out[...] = image
        return out
    roi = mask if mask is not None else roi_mask(image, spec.get("roi", "nonzero"))
    outside = spec.get("outside_value", 0.0)
    for c in range(image.shape[0]):
        channel = image[c]
        if scheme == "zscore":
            # statistics without copying the ROI's values (where= reduces in place)
            mean = float(np.mean(channel, where=roi, dtype=np.float64))
            std = float(
                np.sqrt(
                    np.mean(
                        np.square(channel - np.float32(mean), dtype=np.float32), where=roi, dtype=np.float64
                    )
                )
            )
            np.subtract(channel, np.float32(mean), out=out[c], dtype=np.float32)
            out[c] /= np.float32(std if std > 1e-8 else 1.0)
            if outside is not None:
                np.copyto(out[c], np.float32(outside), where=~roi)
        else:
            out[c] = _deepmedic_robust(np.asarray(channel, dtype=np.float32), roi)
    return out


def masked_mean_std(channel: np.ndarray, roi: np.ndarray, planes: int = 16) -> tuple[float, float]:
    """Mean and standard deviation of ``channel`` inside ``roi``, two passes over slabs of planes in
    float64: no copy of the ROI's values, whatever the scan's size."""
    count = int(roi.sum())
    if count == 0:
        return 0.0, 1.0
    total = 0.0
    for z in range(0, channel.shape[0], planes):
        total += float(np.sum(channel[z : z + planes], where=roi[z : z + planes], dtype=np.float64))
    mean = total / count
    squares = 0.0
    for z in range(0, channel.shape[0], planes):
        deviation = channel[z : z + planes].astype(np.float64) - mean
        squares += float(np.sum(deviation * deviation, where=roi[z : z + planes]))
    return mean, (squares / count) ** 0.5


def _deepmedic_robust(channel: np.ndarray, roi: np.ndarray) -> np.ndarray:
    channel = np.clip(channel, 0, None)
    values = channel[roi]
    lo, hi = np.percentile(values, [5, 95])
    mean, std = values.mean(), values.std()
    keep = (values >= lo) & (values <= hi) & (np.abs(values - mean) <= 3 * std) & (values > channel.mean())
    chosen = values[keep] if keep.any() else values
    scale = chosen.std() if chosen.std() > 1e-8 else 1.0
    return (channel - chosen.mean()) / scale


def padding_value(spec: dict | None) -> float:
    """The value a normalised volume is padded with: what lies outside the ROI after normalising."""
    spec = {**DEFAULT_NORMALIZATION, **(spec or {})}
    value = spec.get("outside_value")
    return float(value) if value is not None else 0.0
