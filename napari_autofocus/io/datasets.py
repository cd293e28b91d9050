"""Conventions of Decathlon (MSD) and nnU-Net v2 dataset folders that both halves of the project share.

Kept light (json + pathlib) so the napari reader can name channels without importing training code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


def find_dataset_json(path: Path) -> Path | None:
    """The ``dataset.json`` of the dataset an image file belongs to (``<root>/imagesTr/<file>``)."""
    for folder in (path.parent, path.parent.parent):
        candidate = folder / "dataset.json"
        if candidate.is_file():
            return candidate
    return None


def read_channel_names(dataset_json: Path) -> dict[int, str]:
    """Channel index -> name from nnU-Net's ``channel_names`` or the Decathlon's ``modality``."""
    try:
        meta = json.loads(dataset_json.read_text())
    except (OSError, ValueError):
        return {}
    names = meta.get("channel_names") or meta.get("modality") or {}
    out = {}
    for key, value in names.items():
        try:
            out[int(key)] = str(value)
        except ValueError:
            continue
    return out


def channel_names_for(path: str | Path, n_channels: int) -> list[str]:
    """Names for the channels of one image file, or [] when no dataset.json says.

    A 4D (Decathlon) file gets all names; an nnU-Net per-channel file ``case_0001.nii.gz`` gets the
    name of channel 1.
    """
    path = Path(path)
    dataset_json = find_dataset_json(path)
    if dataset_json is None:
        return []
    names = read_channel_names(dataset_json)
    if n_channels > 1:
        return [names.get(i, f"channel {i}") for i in range(n_channels)]
    stem = path.name.split(".")[0]
    match = _CHANNEL_SUFFIX.search(stem)
    if match and int(match.group(1)) in names:
        return [names[int(match.group(1))]]
    return []
