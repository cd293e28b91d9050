"""Phantom style names and volume sizes, light enough for argument parsers (no numpy, scipy or nibabel)."""

STYLES = ("clusters", "masses", "blobs", "nodules")


def default_size(style: str) -> int:
    """Volume edge for ``style``: 112 for "nodules" (two masses 32-42 voxels across must fit), else 96."""
    return 112 if style == "nodules" else 96


def smallest_size(style: str) -> int:
    """The smallest volume edge at which ``style``'s large structures fit."""
    return {"blobs": 32, "nodules": 112}.get(style, 64)
