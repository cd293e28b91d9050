"""Autofocus networks: the layer, the paper's architectures, surgery and model files.

Importing this package imports torch; code that only needs a model's description should use
:func:`napari_autofocus.card.read_card` instead.
"""

from napari_autofocus.card import ModelCard, read_card

from .autofocus import AutofocusConv, autofocus_layers, capture_attention
from .checkpoints import load_model, save_model
from .networks import ARCHITECTURES, NetworkConfigError, build_network, canonical_arch
from .surgery import SurgeryError, autofocusify

__all__ = [
    "ARCHITECTURES",
    "AutofocusConv",
    "ModelCard",
    "NetworkConfigError",
    "SurgeryError",
    "autofocus_layers",
    "autofocusify",
    "build_network",
    "canonical_arch",
    "capture_attention",
    "load_model",
    "read_card",
    "save_model",
]
