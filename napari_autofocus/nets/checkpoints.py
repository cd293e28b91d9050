"""Saving and loading models: our safetensors files and the reference ``.pth.tar`` checkpoints.

Our format is one ``.safetensors`` file: the state dict plus header metadata ``format``,
``format_version``, ``model_card`` (JSON, see :mod:`napari_autofocus.nets.card`), ``content_sha256``
(every tensor: name, dtype, shape, bytes, in sorted key order) and ``sha256``, which covers the
weights and the card's exact text together: a damaged or edited file, weights or card (a changed
dilation, normalisation or class name), is refused instead of silently producing wrong
segmentations. Files written before ``sha256`` existed are checked for what their hash covers (the
weights) and their card is reported as unprotected. Weights must be finite, on save and on load.

Loading never unpickles arbitrary objects (safetensors has no code; reference files go through
``torch.load(weights_only=True)``) and never loads part of a model: keys and shapes are checked
before any tensor is copied.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from napari_autofocus.errors import AutofocusError, CheckpointError
from napari_autofocus.io.atomic import write_bytes
from napari_autofocus.nets.card import FORMAT_NAME, FORMAT_VERSION, ModelCard, read_metadata

from . import reference
from .networks import build_network, canonical_arch

_ST_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_CARD_FIELDS = set(ModelCard.__dataclass_fields__)


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, raw little-endian bytes) of every tensor, sorted by name."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        header = f"{name}\0{_ST_DTYPES.get(t.dtype, str(t.dtype))}\0{list(t.shape)}\0"
        h.update(header.encode("utf-8"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(weights_sha256: str, card_json: str) -> str:
    """The hash that protects a model file: its weights' hash and its card's exact text together."""
    return hashlib.sha256(f"{weights_sha256}\0{card_json}".encode()).hexdigest()


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or infinite values."""
    return [
        name
        for name, t in sorted(tensors.items())
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]


# -- cards ------------------------------------------------------------------------------------------


def card_for(model: torch.nn.Module, card: ModelCard | None = None, **fields) -> ModelCard:
    """A card for ``model``: given card/fields, with identity and geometry taken from the model."""
    if not hasattr(model, "arch") or not hasattr(model, "options"):
        raise CheckpointError(
            "save_model needs a network built by build_network (it has no 'arch'/'options')"
        )
    unknown = sorted(set(fields) - _CARD_FIELDS)
    if unknown:
        raise TypeError(f"unknown model card field(s) {unknown}")
    if card is None:
        card = ModelCard(arch=model.arch, in_channels=model.in_channels, num_classes=model.num_classes)
    elif canonical_arch(card.arch) != model.arch:
        raise CheckpointError(f"card says arch {card.arch!r} but the model is {model.arch}")
    card = card.replace(**fields)
    geometry = model.autofocus_geometry()
    dilations = geometry[0]["rates"] if geometry else list(model.options.get("dilations", []))
    return card.replace(
        arch=model.arch,
        in_channels=model.in_channels,
        num_classes=model.num_classes,
        options=json.loads(json.dumps(model.options)),
        dilations=list(dilations),
        autofocus_layers=[g["name"] for g in geometry],
        receptive_field=model.receptive_field,
        margin=model.margin,
    )


def _apply_hints(card: ModelCard, hints: dict, path: Path) -> ModelCard:
    """Identity hints must agree with the file; descriptive hints override the card."""
    unknown = sorted(set(hints) - _CARD_FIELDS)
    if unknown:
        raise TypeError(f"unknown load_model hint(s) {unknown}; hints are model card fields")
    hints = dict(hints)
    if "arch" in hints:
        wanted = canonical_arch(hints.pop("arch"))
        if wanted != canonical_arch(card.arch):
            raise CheckpointError(
                f"{path}: holds a {canonical_arch(card.arch)} model, not the requested {wanted}"
            )
    for key in ("in_channels", "num_classes"):
        if key in hints and int(hints.pop(key)) != getattr(card, key):
            raise CheckpointError(f"{path}: model has {key}={getattr(card, key)}, not the requested value")
    return card.replace(**hints)


# -- saving -----------------------------------------------------------------------------------------


def save_model(
    model: torch.nn.Module, path: str | Path, card: ModelCard | None = None, **card_fields
) -> ModelCard:
    """Write ``model`` and its card to ``path`` atomically (temp file + rename); returns the card."""
    path = Path(path)
    card = card_for(model, card, **card_fields)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"refusing to save {path}: {len(bad)} of {len(tensors)} tensors hold NaN or infinite values "
            f"(e.g. {bad[0]}); the model is unusable"
        )
    card_json = card.to_json()
    weights_sha = content_sha256(tensors)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_card": card_json,
        "content_sha256": weights_sha,
        "sha256": file_sha256(weights_sha, card_json),
    }
    data = st_save(tensors, metadata=metadata)
    write_bytes(path, data, fsync=True)
    return card


# -- loading ----------------------------------------------------------------------------------------


def _looks_like_safetensors(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 2**32


def strict_load(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load all-or-nothing: compare keys and shapes first, naming what differs."""
    _check_matches(model, state, path)
    model.load_state_dict(state, strict=True)


def _check_matches(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Refuse a state dict whose keys or shapes differ from ``model``'s, naming what differs."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    problems = []
    if missing:
        problems.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
    for key in sorted(set(expected) & set(state)):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif tuple(value.shape) != tuple(expected[key].shape):
            problems.append(
                f"shape mismatch for {key}: file {tuple(value.shape)}, model {tuple(expected[key].shape)}"
            )
    if problems:
        raise CheckpointError(f"{path}: does not match a {model.arch} network: " + "; ".join(problems[:10]))


def _load_ours(path: Path, hints: dict) -> tuple[torch.nn.Module, ModelCard]:
    meta = read_metadata(path)
    try:
        card = ModelCard.from_json(meta["model_card"])
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    raw = path.read_bytes()
    try:
        tensors = st_load(raw)
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: damaged or truncated model file ({exc})") from None
    weights_sha = content_sha256(tensors)
    if weights_sha != meta.get("content_sha256"):
        raise CheckpointError(f"{path}: content hash mismatch: the weights were modified or damaged")
    if "sha256" in meta:
        if file_sha256(weights_sha, meta["model_card"]) != meta["sha256"]:
            raise CheckpointError(
                f"{path}: content hash mismatch: the model card was modified (the hash covers the card "
                "and the weights together)"
            )
    else:
        card.extra["integrity"] = "weights only: written before the hash covered the model card"
        warnings.warn(
            f"{path}: an older model file whose hash covers the weights only; its model card is not "
            "protected against changes",
            stacklevel=3,
        )
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(
            f"{path}: {len(bad)} of {len(tensors)} tensors hold NaN or infinite values (e.g. {bad[0]}); "
            "the model is unusable"
        )
    card = _apply_hints(card, hints, path)
    try:  # shapes first, on the meta device: a forged card allocates nothing before it is refused
        with torch.device("meta"):
            shell = build_network(card.arch, card.in_channels, card.num_classes, **card.options)
    except (AutofocusError, TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: model card describes a network we cannot build: {exc}") from None
    _check_matches(shell, tensors, path)
    model = build_network(card.arch, card.in_channels, card.num_classes, **card.options)
    strict_load(model, tensors, path)
    # the geometry is the network's, never the card's word for it
    return model, card.replace(receptive_field=model.receptive_field, margin=model.margin)


def _read_reference(path: Path) -> dict:
    expected = (
        "one of our .safetensors model files, or a reference checkpoint written by torch.save "
        "(a dict with 'state_dict', or a bare state dict)"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes are noise here
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines()]
        detail = next((line for line in lines if "Unsupported" in line), "not a tensors-only pickle")
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain containers ({detail}); "
            f"expected {expected}. Arbitrary pickled objects are never loaded, as they could run code"
        ) from None
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc}); expected {expected}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = obj["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        state = obj
    else:
        raise CheckpointError(f"{path}: loaded, but it holds no state dict; expected {expected}")
    return {"state": state, "epoch": obj.get("epoch") if isinstance(obj, dict) else None}


def region_convention(name: str) -> dict[str, list[int]]:
    from napari_autofocus.analysis.metrics import REGION_CONVENTIONS

    return {region: list(values) for region, values in REGION_CONVENTIONS[name].items()}


def reference_card(model, path: Path, epoch=None) -> ModelCard:
    """Card defaults for a model trained with the reference code on BRATS 2015."""
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    card = ModelCard(
        arch=model.arch,
        in_channels=model.in_channels,
        num_classes=model.num_classes,
        modalities=list(reference.REFERENCE_MODALITIES) if model.in_channels == 4 else [],
        class_names=dict(reference.REFERENCE_CLASS_NAMES) if model.num_classes == 5 else {},
        regions=region_convention(reference.REFERENCE_REGION_CONVENTION) if model.num_classes == 5 else {},
        normalization={
            "scheme": "zscore",
            "roi": "nonzero",
            "statistics": "deepmedic-robust",
            "outside_value": None,
        },
        provenance={"source": "reference", "file": path.name, "sha256": sha, "epoch": epoch},
        description=f"{model.arch} imported from an authors' reference checkpoint ({path.name})",
    )
    return card_for(model, card)


def _load_reference(path: Path, hints: dict) -> tuple[torch.nn.Module, ModelCard]:
    content = _read_reference(path)
    try:
        state = reference.strip_prefix(content["state"])
        arch = reference.detect_arch(state)
        if "arch" in hints and canonical_arch(hints["arch"]) != arch:
            raise CheckpointError(
                f"{path}: requested arch {canonical_arch(hints['arch'])} but the checkpoint holds {arch}"
            )
        in_channels, num_classes = reference.detect_sizes(state)
        model = build_network(arch, in_channels, num_classes)
        converted = reference.reference_to_ours(state)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a checkpoint of the authors' networks (its tensors do not have their layout: "
            f"{type(exc).__name__}: {exc})"
        ) from None
    bad = nonfinite_tensors({k: v for k, v in converted.items() if isinstance(v, torch.Tensor)})
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensors hold NaN or infinite values (e.g. {bad[0]})")
    strict_load(model, converted, path)
    card = _apply_hints(reference_card(model, path, content["epoch"]), hints, path)
    return model, card


def load_model(path: str | Path, **hints) -> tuple[torch.nn.Module, ModelCard]:
    """Load a model file (ours, a bioimage.io package we exported, or a reference ``.pth.tar``) in
    eval mode, with its card.

    ``hints`` are model card fields: ``arch``/``in_channels``/``num_classes`` must agree with the
    file, the others (modalities, class_names, ...) override the card.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if _looks_like_safetensors(path):
        model, card = _load_ours(path, hints)
    elif zipfile.is_zipfile(path):  # a bioimage.io package (torch.save files are zips too: not ours)
        from napari_autofocus.exchange.package_import import is_package, load_package

        if not is_package(path):
            model, card = _load_reference(path, hints)
        else:
            model, card = load_package(path)
            card = _apply_hints(card, hints, path)
    else:
        model, card = _load_reference(path, hints)
    return model.eval(), card
