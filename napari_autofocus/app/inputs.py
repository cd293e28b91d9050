"""Which image layer feeds which input channel of a model, and whether the inputs can be used.

Models name their channels in the card (``modalities``); layers carry a name and, when read from a
NIfTI file, ``metadata["channel_name"]``. Matching by name means the user rarely has to pick, and a
problem (too few layers, a 2D image, mismatched grids) is explained in words rather than raised
deep inside the network. No Qt, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerInfo:
    """What matching needs to know about an image layer."""

    name: str
    shape: tuple[int, ...]
    channel_name: str | None = None


def _key(text: str | None) -> str:
    return re.sub(r"[^a-z0-9]", "", (text or "").lower())


def modality_names(modalities: Sequence[str], in_channels: int) -> list[str]:
    """The card's channel names, or generic names "channel i" when the card has none."""
    names = list(modalities)
    if len(names) == in_channels:
        return names
    return [f"channel {i}" for i in range(in_channels)]


def match_modalities(modalities: Sequence[str], layers: Sequence[LayerInfo]) -> dict[str, str | None]:
    """Modality -> layer name: exact channel name first, then the modality inside the layer name.

    Each layer is used at most once. When names say nothing but there are exactly as many layers as
    modalities, the remaining modalities take the remaining layers in order.
    """
    mapping: dict[str, str | None] = dict.fromkeys(modalities)
    used: set[str] = set()

    def take(modality: str, test) -> None:
        if mapping[modality] is not None:
            return
        for layer in layers:
            if layer.name not in used and test(layer):
                mapping[modality] = layer.name
                used.add(layer.name)
                return

    for modality in modalities:
        take(modality, lambda layer, m=modality: _key(layer.channel_name) == _key(m) != "")
    for modality in modalities:
        take(modality, lambda layer, m=modality: _key(m) != "" and _key(m) in _key(layer.name))
    if len(layers) == len(modalities):
        rest = [layer for layer in layers if layer.name not in used]
        for modality in modalities:
            if mapping[modality] is None and rest:
                mapping[modality] = rest.pop(0).name
    return mapping


def input_problems(mapping: Mapping[str, str | None], layers: Sequence[LayerInfo]) -> list[str]:
    """Sentences saying why these inputs cannot be run; empty when they can."""
    by_name = {layer.name: layer for layer in layers}
    problems = []
    images_3d = [layer for layer in layers if len(layer.shape) >= 3]
    if len(images_3d) < len(mapping):
        problems.append(
            f"The model expects {len(mapping)} input channel(s) ({', '.join(mapping)}) but "
            f"{len(images_3d)} 3D image layer(s) are open."
        )
    missing = [m for m, name in mapping.items() if name is None]
    if missing:
        problems.append(f"Choose an image layer for: {', '.join(missing)}.")
    chosen = [name for name in mapping.values() if name is not None]
    repeated = sorted({name for name in chosen if chosen.count(name) > 1})
    if repeated:
        problems.append(f"The same layer feeds several channels: {', '.join(repeated)}.")
    for name in dict.fromkeys(chosen):
        layer = by_name.get(name)
        if layer is None:
            problems.append(f"Layer {name!r} is no longer open.")
        elif len(layer.shape) != 3:
            problems.append(
                f"Layer {name!r} has {len(layer.shape)} dimension(s) {tuple(layer.shape)}; the networks "
                "segment 3D volumes (one layer per channel)."
            )
    shapes = {tuple(by_name[n].shape) for n in chosen if n in by_name and len(by_name[n].shape) == 3}
    if len(shapes) > 1:
        problems.append(f"The chosen layers have different shapes {sorted(shapes)}; resample them first.")
    return problems
