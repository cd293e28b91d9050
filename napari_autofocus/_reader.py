"""napari reader for NIfTI volumes (.nii, .nii.gz): one layer per channel, geometry kept.

napari's built-in reader also claims these extensions and fails on them, so this plugin
records itself as the preferred reader (:func:`prefer_this_reader`) whenever it runs.
"""

from __future__ import annotations

import os

from napari_autofocus.errors import AutofocusError
from napari_autofocus.io.nifti import is_nifti_path, load_nifti, strip_nifti_suffix

PLUGIN_NAME = "napari-autofocus"
READER_PATTERNS = ("*.nii", "*.nii.gz")


def napari_get_reader(path):
    """Return a reader for NIfTI paths, ``None`` (declined) for anything else."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(is_nifti_path(p) and not os.path.isdir(p) for p in paths):
        return None
    return read_nifti


# napari's "read, and there is nothing to add": no second reader is tried, no traceback is shown
NOTHING_READ = [(None,)]


def read_nifti(path):
    """Layer data tuples for one or several NIfTI files.

    A file that cannot be read (header, affine, datatype, a malformed ``dataset.json`` beside it)
    is one error notification that says why, and nothing is added: no traceback, no half-read set.
    """
    try:
        return load_layers(path)
    except AutofocusError as exc:
        _notify_error(str(exc))
        return NOTHING_READ


def load_layers(path) -> list[tuple]:
    """Layer data tuples for one or several NIfTI files; raises the project's error with a clear message."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers = []
    for p in paths:
        volume = load_nifti(p)
        layers.extend(volume_layer_data(volume, strip_nifti_suffix(p)))
        if volume.geometry.oblique:
            _warn(f"{os.path.basename(p)}: {OBLIQUE_NOTE}")
    prefer_this_reader()
    return layers


OBLIQUE_NOTE = (
    "its voxel axes are oblique to the scanner's; it is shown axis-aligned (the rotation is not drawn), "
    "and every file written from it keeps its original affine"
)


def _notify_error(message: str) -> None:
    try:
        from napari.utils.notifications import show_error
    except ImportError:  # napari not installed: a caller from Python gets the message on stderr
        import sys

        print(f"error: {message}", file=sys.stderr)
        return
    show_error(message)


def _warn(message: str) -> None:
    try:
        from napari.utils.notifications import show_warning
    except ImportError:
        return
    show_warning(message)


def volume_layer_data(volume, name: str) -> list[tuple]:
    """napari LayerData tuples for a NiftiVolume: labels, or one image layer per channel."""
    base = volume.geometry.layer_kwargs()
    if volume.geometry.oblique:
        base["metadata"] = {**base["metadata"], "oblique": OBLIQUE_NOTE}
    if volume.is_label:
        return [(volume.data, {**base, "name": name}, "labels")]
    channels = volume.channels
    layers = []
    for index, channel in enumerate(channels):
        if len(channels) > 1:
            channel_name = volume.channel_names[index] if volume.channel_names else f"channel {index}"
            layer_name = f"{name} [{channel_name}]"
        else:
            layer_name = f"{name} [{volume.channel_names[0]}]" if volume.channel_names else name
        metadata = {**base["metadata"], "channel": index, "channel_name": _channel_name(volume, index)}
        kwargs = {**base, "name": layer_name, "metadata": metadata, "colormap": "gray"}
        if len(channels) > 1:
            kwargs["visible"] = index == 0
        layers.append((channel, kwargs, "image"))
    return layers


def _channel_name(volume, index: int) -> str | None:
    return volume.channel_names[index] if index < len(volume.channel_names) else None


def prefer_this_reader() -> None:
    """Make this plugin napari's reader for *.nii/*.nii.gz unless the user chose another that works.

    Without it, File > Open and drag-and-drop ask napari's built-in reader, which fails on NIfTI.
    """
    try:
        from napari.settings import get_settings
    except ImportError:  # napari not installed: nothing to configure
        return
    plugins = get_settings().plugins
    current = dict(plugins.extension2reader)
    changed = False
    for pattern in READER_PATTERNS:
        if current.get(pattern) in (None, "napari", "builtins"):
            current[pattern] = PLUGIN_NAME
            changed = True
    if changed:
        plugins.extension2reader = current
