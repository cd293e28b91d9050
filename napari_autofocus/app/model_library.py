"""Where the plugin finds models: bundled files, recently used files, and any file the user picks.

Listing reads only model cards (:func:`napari_autofocus.nets.card.read_card`), so the model menu opens
without importing torch. A reference ``.pth.tar`` has no card; describing one loads it (torch).
The recent list is a small JSON file in the user's config directory; ``NAPARI_AUTOFOCUS_CONFIG_DIR``
moves it (tests point it at a temporary folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from napari_autofocus.errors import AutofocusError
from napari_autofocus.nets.card import ModelCard, read_card
from napari_autofocus.nets.registry import ARCHITECTURES

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "sample_data" / "models"
RECENT_FILE = "recent_models.json"
MAX_RECENT = 8
# The architectures of napari_autofocus.nets.ARCHITECTURES, repeated so the menu needs no torch
# (a test checks they agree). "auto" lets the reference importer detect it from the weights.
ARCH_CHOICES = ("auto", *ARCHITECTURES)


@dataclass(frozen=True)
class ModelEntry:
    """One choice in a model menu."""

    path: str
    source: str  # "bundled" | "recent" | "file"
    arch: str = "auto"  # only used for reference checkpoints

    @property
    def label(self) -> str:
        tag = {"bundled": "bundled", "recent": "recent"}.get(self.source, "file")
        arch = f", {self.arch}" if is_reference_checkpoint(self.path) and self.arch != "auto" else ""
        return f"{model_name(self.path)} ({tag}{arch})"


def model_name(path: str | os.PathLike) -> str:
    """A short display name: the file name without model suffixes."""
    name = Path(path).name
    for suffix in (".safetensors", ".bioimageio.zip", ".pth.tar", ".pth", ".pt", ".tar", ".zip"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def model_file(path: str | os.PathLike) -> Path:
    """The model file a path names: the file itself, or a training run folder's model.safetensors."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise AutofocusError(f"{path}: a folder without model.safetensors (not a finished training run)")
        return path / "model.safetensors"
    return path


def is_package(path: str | os.PathLike) -> bool:
    """A bioimage.io package (a ``.zip``); its card is read without torch."""
    return str(path).endswith(".zip")


def is_reference_checkpoint(path: str | os.PathLike) -> bool:
    """A torch.save checkpoint (the authors' format), which needs an architecture to be known."""
    return not str(path).endswith(".safetensors") and not is_package(path)


def bundled_models(folder: Path | None = None) -> list[ModelEntry]:
    """Model files shipped with the plugin (none is fine)."""
    folder = BUNDLED_DIR if folder is None else folder
    if not folder.is_dir():
        return []
    return [ModelEntry(str(p), "bundled") for p in sorted(folder.glob("*.safetensors"))]


def config_dir() -> Path:
    """The plugin's settings folder (created on first write)."""
    override = os.environ.get("NAPARI_AUTOFOCUS_CONFIG_DIR")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_config_dir("napari-autofocus", appauthor=False))


def recent_models() -> list[ModelEntry]:
    """Recently used model files that still exist, newest first."""
    path = config_dir() / RECENT_FILE
    try:
        items = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # a damaged list is an empty one: it is only a convenience
        return []
    entries = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and Path(str(item.get("path", ""))).is_file():
            entries.append(ModelEntry(str(item["path"]), "recent", str(item.get("arch", "auto"))))
    return entries


def remember_model(path: str | os.PathLike, arch: str = "auto") -> None:
    """Put a model file at the top of the recent list (best effort: an unwritable config is ignored)."""
    path = str(Path(path).resolve())
    items = [{"path": e.path, "arch": e.arch} for e in recent_models() if e.path != path]
    items = [{"path": path, "arch": arch}, *items][:MAX_RECENT]
    folder = config_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RECENT_FILE).write_text(json.dumps(items, indent=1))
    except OSError:
        pass


def available_models() -> list[ModelEntry]:
    """Bundled models, then recent ones not already listed."""
    bundled = bundled_models()
    seen = {str(Path(e.path).resolve()) for e in bundled}
    return bundled + [e for e in recent_models() if str(Path(e.path).resolve()) not in seen]


def describe(path: str | os.PathLike, arch: str = "auto") -> ModelCard:
    """The card of a model file; a reference checkpoint is loaded (torch) to build its card."""
    if not Path(path).is_file():
        raise AutofocusError(f"{path}: no such model file")
    if is_package(path):
        return package_card(Path(path))
    if not is_reference_checkpoint(path):
        return read_card(path)
    from napari_autofocus.nets import load_model

    hints = {} if arch == "auto" else {"arch": arch}
    return load_model(path, **hints)[1]


def package_card(path: Path) -> ModelCard:
    """The card of a bioimage.io package napari-autofocus exported (no torch)."""
    from napari_autofocus.exchange.package_import import package_config

    return ModelCard.from_dict(package_config(path)["card"])


def fitting_model(entries: list[ModelEntry], layers) -> ModelEntry | None:
    """The first bundled model whose channels the open image layers fill exactly by their names
    (``layers``: :class:`~napari_autofocus.app.inputs.LayerInfo`), or None when none does."""
    return next((entry for entry in entries if model_fit(entry, layers).fits), None)


@dataclass(frozen=True)
class ModelFit:
    """Whether a bundled model is made for the open scan, and what the menu says about it."""

    fits: bool
    note: str  # "4 channels: T1, T1c, T2, FLAIR; simulated tumours on the MNI152 brain"


def model_fit(entry: ModelEntry, layers) -> ModelFit:
    """Whether the open image layers fill ``entry``'s channels exactly by their names (bundled
    models only: a user's file is never judged by its name)."""
    from napari_autofocus.app.inputs import match_modalities, modality_names

    if entry.source != "bundled" or is_reference_checkpoint(entry.path):
        return ModelFit(False, "")
    try:
        card = read_card(entry.path)
    except AutofocusError as exc:
        return ModelFit(False, str(exc))
    note = f"{card.in_channels} channel(s): {', '.join(card.modalities)}; {trained_on(card)}"
    if card.in_channels != len(layers):
        return ModelFit(False, note)
    named = {layer.channel_name for layer in layers if layer.channel_name}
    mapping = match_modalities(modality_names(card.modalities, card.in_channels), layers)
    return ModelFit(all(mapping.values()) and (not named or named <= set(card.modalities)), note)


def trained_on(card: ModelCard) -> str:
    """What a model learnt from, in a few words (a teaching phantom or a dataset)."""
    from napari_autofocus.inference.scan_checks import Contract

    contract = Contract.from_card(card)
    if contract.phantom and "brain" in contract.trained_on.lower():
        return "simulated tumours on the MNI152 brain"
    if contract.phantom:
        return "synthetic phantoms"
    return f"trained on {contract.trained_on}" if contract.trained_on else "its training data"


def ways_forward(layers) -> str:
    """One sentence for a scan no bundled model is made for: the three ways to go on."""
    names = ", ".join(layer.name for layer in layers)
    return (
        f"No bundled model is made for this scan ({len(layers)} image layer(s): {names}). Three ways "
        "forward: train one on your own scans with `python -m src_training train` (see the README); "
        "Browse for the authors' .pth.tar checkpoint (and choose its architecture); or open a sample "
        "(File > Open Sample > Autofocus) to see the bundled models at work."
    )


def summary(card: ModelCard) -> str:
    """One line about a model for the widgets."""
    classes = ", ".join(card.class_names.get(str(i), str(i)) for i in range(card.num_classes))
    layers = f", autofocus {'/'.join(card.autofocus_layers)}" if card.autofocus_layers else ""
    rf = f", RF {card.receptive_field}" if card.receptive_field else ""
    return f"{card.arch}{layers}{rf}; {card.in_channels} channel(s); classes: {classes}"
