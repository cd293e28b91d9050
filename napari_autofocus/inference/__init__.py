"""Whole-volume inference: exact by default (per-layer streaming), cropped to the foreground,
attention maps on the image grid; the authors' tiling as ``mode="reference"``."""

from napari_autofocus.inference.engine import (
    DEFAULT_MEMORY_BUDGET_GIB,
    MODES,
    Cancelled,
    Prediction,
    make_plan,
    predict_volume,
    prefers_channels_last,
    resolve_device,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET_GIB",
    "MODES",
    "Cancelled",
    "Prediction",
    "make_plan",
    "predict_volume",
    "prefers_channels_last",
    "resolve_device",
]
