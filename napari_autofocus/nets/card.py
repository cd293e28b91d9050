"""Model cards: what a model file says about itself, readable without torch.

Every model file we write is one ``.safetensors`` file whose header metadata carries a JSON model
card (architecture, options, channels in order, class names, normalisation, geometry, provenance).
The napari plugin lists and describes models from the card alone, so this module imports only the
standard library and parses the safetensors header itself: 8 bytes little-endian header length,
then a JSON object whose ``__metadata__`` holds string values.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_autofocus.errors import CheckpointError

FORMAT_NAME = "napari-autofocus-model"
FORMAT_VERSION = "1"
# A header larger than this is not one of ours (ours are a few kB); refuse rather than read GBs.
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Sane ranges for the card's sizes: checked before anything is built from them (cards can be forged).
MAX_IN_CHANNELS = 1024
MAX_CLASSES = 1000  # label values 0..999, as datasets allow
MAX_GEOMETRY_VOXELS = 100_000


@dataclass
class ModelCard:
    """Self-description of a trained model.

    ``modalities`` are the input channel names in channel order; ``class_names`` maps the label
    value (as a string, JSON keys are strings) to a name; ``regions`` maps evaluation regions to
    label values (e.g. BraTS whole/core/enhancing); ``normalization`` describes the intensity
    preprocessing the model expects; ``spacing`` is the voxel size (mm) of the data it was trained
    on and ``target_spacing`` the grid every input is resampled to before the network runs (None:
    inputs are used on their own grid); ``receptive_field`` and ``margin`` (voxels per side lost by
    valid convolutions) are filled from the network when saving.
    """

    arch: str
    in_channels: int
    num_classes: int
    options: dict = field(default_factory=dict)
    dilations: list[int] = field(default_factory=list)
    autofocus_layers: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    class_names: dict[str, str] = field(default_factory=dict)
    regions: dict[str, list[int]] = field(default_factory=dict)
    normalization: dict = field(default_factory=dict)
    spacing: list[float] | None = None
    target_spacing: list[float] | None = None
    receptive_field: int | None = None
    margin: int | None = None
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    description: str = ""
    format_version: str = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        """Build from a dict; keys this version does not know are kept in ``extra``."""
        known = {f.name for f in dataclasses.fields(cls)}
        missing = [k for k in ("arch", "in_channels", "num_classes") if k not in data]
        if missing:
            raise CheckpointError(f"model card lacks required field(s) {missing}")
        problems = schema_problems(data)
        if problems:
            raise CheckpointError("model card is not valid: " + "; ".join(problems))
        kwargs = {k: v for k, v in data.items() if k in known}
        if "target_spacing" not in data:  # cards before it was a field kept it in the provenance
            kwargs["target_spacing"] = (data.get("provenance") or {}).get("resampled_to_spacing")
        extra = dict(kwargs.pop("extra", None) or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        card = cls(**kwargs, extra=extra)
        card.class_names = {str(k): str(v) for k, v in card.class_names.items()}
        return card

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"model card is not valid JSON: {exc}") from None
        except RecursionError:
            raise CheckpointError("model card is not valid JSON (nested too deeply)") from None
        if not isinstance(data, dict):
            raise CheckpointError("model card JSON is not an object")
        return cls.from_dict(data)

    def replace(self, **changes) -> ModelCard:
        """A copy with some fields changed (unknown field names raise TypeError)."""
        return dataclasses.replace(self, **changes)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _spacing(value) -> bool:
    return value is None or (
        isinstance(value, list) and len(value) == 3 and all(_is_number(v) and v > 0 for v in value)
    )


# field -> (check, what it must be); fields not listed here are free-form or checked elsewhere.
_SCHEMA = {
    "arch": (lambda v: isinstance(v, str) and bool(v), "a non-empty string"),
    "in_channels": (lambda v: _is_int(v) and 1 <= v <= MAX_IN_CHANNELS, f"an integer 1..{MAX_IN_CHANNELS}"),
    "num_classes": (lambda v: _is_int(v) and 2 <= v <= MAX_CLASSES, f"an integer 2..{MAX_CLASSES}"),
    "options": (lambda v: isinstance(v, dict), "an object"),
    "dilations": (
        lambda v: isinstance(v, list) and len(v) <= 64 and all(_is_int(d) and 1 <= d <= 64 for d in v),
        "a list of integers 1..64",
    ),
    "autofocus_layers": (
        lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
        "a list of names",
    ),
    "modalities": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "a list of names"),
    "class_names": (
        lambda v: isinstance(v, dict) and all(str(k).lstrip("-").isdigit() for k in v),
        "an object of label value -> name",
    ),
    "regions": (
        lambda v: (
            isinstance(v, dict) and all(isinstance(x, list) and all(map(_is_int, x)) for x in v.values())
        ),
        "an object of name -> list of label values",
    ),
    "normalization": (lambda v: isinstance(v, dict), "an object"),
    "spacing": (_spacing, "null or three positive voxel sizes (mm)"),
    "target_spacing": (_spacing, "null or three positive voxel sizes (mm)"),
    "receptive_field": (
        lambda v: v is None or (_is_int(v) and 1 <= v <= MAX_GEOMETRY_VOXELS),
        f"null or an integer 1..{MAX_GEOMETRY_VOXELS}",
    ),
    "margin": (
        lambda v: v is None or (_is_int(v) and 0 <= v <= MAX_GEOMETRY_VOXELS),
        f"null or an integer 0..{MAX_GEOMETRY_VOXELS}",
    ),
    "provenance": (lambda v: isinstance(v, dict), "an object"),
    "metrics": (lambda v: isinstance(v, dict), "an object"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
}


def schema_problems(data: dict) -> list[str]:
    """What is wrong with a card's fields, one line each (empty when every field is well-typed)."""
    problems = []
    for name, (ok, expected) in _SCHEMA.items():
        if name in data and not ok(data[name]):
            problems.append(f"field {name!r} must be {expected}, got {data[name]!r:.60}")
    return problems


def read_header(path: str | Path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where tensor data starts."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path}: too short to be a safetensors model file")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"{path}: not a safetensors model file (implausible header size {length})"
                )
            raw = fh.read(length)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read model file: {exc.strerror or exc}") from None
    if len(raw) != length:
        raise CheckpointError(
            f"{path}: truncated safetensors header (expected {length} bytes, got {len(raw)})"
        )
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: not a safetensors model file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors model file (header is not a JSON object)")
    return header, 8 + length


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, after checking it is one of our model files."""
    header, _ = read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: a safetensors file but not a napari-autofocus model (metadata 'format' is "
            f"{meta.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: model file format version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    if "model_card" not in meta:
        raise CheckpointError(f"{path}: model file has no model card")
    return meta


def read_card(path: str | Path) -> ModelCard:
    """Read the model card from a model file's header without torch and without loading weights."""
    return ModelCard.from_json(read_metadata(path)["model_card"])
