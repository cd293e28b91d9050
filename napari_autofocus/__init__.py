"""napari-autofocus: autofocus segmentation networks and their attention maps in napari.

This module stays light: it must not import torch or Qt. The networks live in
:mod:`napari_autofocus.nets` and are imported only when a model is needed.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
