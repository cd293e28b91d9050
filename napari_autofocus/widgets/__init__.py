"""Dock widgets: thin Qt views over :mod:`napari_autofocus.app` and :mod:`napari_autofocus.analysis`
(shared pieces: ``_background`` runs jobs, ``_common`` layer helpers, ``_result_layers`` puts results in the
viewer, ``_charts`` and ``_stacked_bars`` draw, ``_tips`` holds every tooltip)."""
