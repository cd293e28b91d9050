"""Whole-volume inference: exact tiling for valid convolutions, attention maps on the image grid."""

from napari_autofocus.inference.engine import (
    DEFAULT_MEMORY_BUDGET_GIB,
    Cancelled,
    Prediction,
    make_plan,
    predict_volume,
    prefers_channels_last,
    resolve_device,
)

__all__ = [
    "DEFAULT_MEMORY_BUDGET_GIB",
    "Cancelled",
    "Prediction",
    "make_plan",
    "predict_volume",
    "prefers_channels_last",
    "resolve_device",
]
