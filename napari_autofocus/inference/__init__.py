"""Whole-volume inference: exact by default (per-layer streaming), cropped to the foreground,
attention maps on the image grid; the authors' tiling as ``mode="reference"``; and the predictor
every caller goes through (:mod:`napari_autofocus.inference.predictor`).

The engine's names are loaded on first use, so the predictor's torch-free checks (what does not
match the model) can run in the plugin before any model is loaded.
"""

from __future__ import annotations

import importlib

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


_HOME = {"Cancelled": "strategies", "make_plan": "strategies", "DEFAULT_MEMORY_BUDGET_GIB": "strategies"}


def __getattr__(name: str):
    if name in __all__:
        module = importlib.import_module(f"napari_autofocus.inference.{_HOME.get(name, 'engine')}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
