"""Load a bioimage.io package that napari-autofocus exported back as our model and card.

Only data is read: the card from the package's ``config``, the ``pytorch_state_dict`` weights with
``torch.load(weights_only=True)`` after their SHA-256 matched the description. The package's
``architecture.py`` is never run; the network is built from our own code, as the card says. A
package of another origin is refused by name, with what we accept instead.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

from napari_autofocus.errors import CheckpointError

EXPORT_MARKER = "napari-autofocus"  # the config key that marks a package as ours
MAX_RDF_BYTES = 4 * 2**20
MAX_WEIGHTS_BYTES = 2 * 2**30  # far above any autofocus network (AFN-6 at full width: 12 MB)
STATE_PREFIX = "outputs.net."  # where PackagedNetwork keeps the network


def is_package(path: str | Path) -> bool:
    """A zip file with an ``rdf.yaml`` (a bioimage.io package, ours or not)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            return "rdf.yaml" in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _read_description(archive: zipfile.ZipFile, path: Path) -> dict:
    import yaml

    try:
        info = archive.getinfo("rdf.yaml")
    except KeyError:
        raise CheckpointError(f"{path}: a zip file without rdf.yaml, not a bioimage.io package") from None
    if info.file_size > MAX_RDF_BYTES:
        raise CheckpointError(
            f"{path}: rdf.yaml is {info.file_size} bytes, more than a model description holds"
        )
    try:
        rdf = yaml.safe_load(archive.read(info))
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{path}: rdf.yaml is not valid YAML ({exc})") from None
    if not isinstance(rdf, dict):
        raise CheckpointError(f"{path}: rdf.yaml does not describe a model")
    return rdf


def _our_config(rdf: dict, path: Path) -> dict:
    config = rdf.get("config")
    ours = config.get(EXPORT_MARKER) if isinstance(config, dict) else None
    if not isinstance(ours, dict) or not isinstance(ours.get("card"), dict):
        raise CheckpointError(
            f"{path}: a bioimage.io package that napari-autofocus did not export (its config has no "
            f"'{EXPORT_MARKER}' model card); we load our own packages, .safetensors model files and "
            "the authors' .pth.tar checkpoints"
        )
    return ours


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable zip file ({exc})") from None


def package_config(path: str | Path) -> dict:
    """Our config block (card, export facts) of a package we exported; CheckpointError otherwise."""
    path = Path(path)
    with _open(path) as archive:
        return _our_config(_read_description(archive, path), path)


def load_package(path: str | Path):
    """(model in eval mode, card) from a package this project exported."""
    import torch

    from napari_autofocus.nets.card import ModelCard
    from napari_autofocus.nets.checkpoints import strict_load
    from napari_autofocus.nets.networks import build_network

    path = Path(path)
    with _open(path) as archive:
        rdf = _read_description(archive, path)
        ours = _our_config(rdf, path)
        card = ModelCard.from_dict(ours["card"])
        entry = ((rdf.get("weights") or {}).get("pytorch_state_dict")) or {}
        name, digest = entry.get("source"), entry.get("sha256")
        if not isinstance(name, str) or name not in archive.namelist():
            raise CheckpointError(f"{path}: the package lacks its pytorch_state_dict weights")
        info = archive.getinfo(name)
        if info.file_size > MAX_WEIGHTS_BYTES:
            raise CheckpointError(f"{path}: {name} is {info.file_size} bytes, more than an autofocus network")
        raw = archive.read(info)
    if not isinstance(digest, str) or hashlib.sha256(raw).hexdigest() != digest:
        raise CheckpointError(f"{path}: {name} does not match the SHA-256 in rdf.yaml: damaged or modified")
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged or non-tensor content
        raise CheckpointError(f"{path}: {name} is not a plain state dict ({exc})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {name} is not a state dict")
    net_state = {k[len(STATE_PREFIX) :]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}
    model = build_network(card.arch, card.in_channels, card.num_classes, **card.options)
    strict_load(model, net_state, path)
    card.provenance = {**card.provenance, "imported_from": f"bioimage.io package {path.name}"}
    return model.eval(), card.replace(receptive_field=model.receptive_field, margin=model.margin)
