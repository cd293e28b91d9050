"""Conventions of Decathlon (MSD) and nnU-Net v2 dataset folders that both halves of the project share.

Kept light (json + pathlib) so the napari reader can name channels without importing training code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from napari_autofocus.errors import DatasetError

MAX_JSON_BYTES = 64 * 2**20  # the Decathlon's largest dataset.json is under 1 MB
_CHANNEL_SUFFIX = re.compile(r"_(\d{4})$")


def find_dataset_json(path: Path) -> Path | None:
    """The ``dataset.json`` of the dataset an image file belongs to (``<root>/imagesTr/<file>``)."""
    for folder in (path.parent, path.parent.parent):
        candidate = folder / "dataset.json"
        if candidate.is_file():
            return candidate
    return None


def read_dataset_json(path: Path) -> dict:
    """A ``dataset.json`` as a dict, or a :class:`DatasetError` that says what is wrong with it."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise DatasetError(f"{path}: {size} bytes; a dataset.json is at most {MAX_JSON_BYTES} bytes")
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: not readable JSON ({exc})") from None
    except RecursionError:
        raise DatasetError(f"{path}: not readable JSON (nested too deeply)") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: expected a JSON object, got a {type(meta).__name__}")
    return meta


def read_channel_names(dataset_json: Path) -> dict[int, str]:
    """Channel index -> name from nnU-Net's ``channel_names`` or the Decathlon's ``modality``."""
    meta = read_dataset_json(dataset_json)
    key = "channel_names" if meta.get("channel_names") else "modality"
    names = meta.get(key) or {}
    if not isinstance(names, dict):
        raise DatasetError(
            f'{dataset_json}: {key!r} must map channel numbers to names (e.g. {{"0": "T1"}}), '
            f"got a {type(names).__name__}"
        )
    out = {}
    for number, value in names.items():
        if str(number).strip().isdigit() and len(str(number).strip()) < 6:
            out[int(number)] = str(value)
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
