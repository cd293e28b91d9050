"""Dock widgets: thin Qt views over the Qt-free modules of napari_autofocus."""
