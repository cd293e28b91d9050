"""Networks: the autofocus layer, the paper's architectures, their registry, surgery and model files.

Layers and blocks (``autofocus``, ``blocks``, ``slabs``), the shared geometry (``base``), the
architectures (``networks``, ``deepmedic``), names and option defaults (``registry``, torch-free),
model files (``checkpoints``), the authors' checkpoint layout (``reference``) and ``surgery``.
Names are loaded on first use: ``from napari_autofocus.nets.registry import ARCHITECTURES`` and the
model card do not import torch; building or loading a network does.
"""

from __future__ import annotations

import importlib

from napari_autofocus.nets.card import ModelCard, read_card

_LAZY = {
    "AutofocusConv": "autofocus",
    "autofocus_layers": "autofocus",
    "capture_attention": "autofocus",
    "override_attention": "autofocus",
    "load_model": "checkpoints",
    "save_model": "checkpoints",
    "build_network": "networks",
    "ARCHITECTURES": "registry",
    "NetworkConfigError": "registry",
    "canonical_arch": "registry",
    "SurgeryError": "surgery",
    "autofocusify": "surgery",
}

__all__ = ["ModelCard", "read_card", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
