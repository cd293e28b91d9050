"""Training, evaluation and command-line tools for autofocus networks (``python -m src_training``).

Importing this package must never import Qt or napari: it runs on display-less GPU servers.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
