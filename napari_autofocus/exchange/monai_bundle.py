"""Export a model as a MONAI bundle whose inference runs our exact engine.

Layout (MONAI's bundle specification): ``configs/metadata.json`` (with ``network_data_format``),
``configs/inference.json``, ``models/model.pt`` (the network's plain state dict), ``docs/README.md``
and ``docs/license.txt``. The network and the inferer are napari-autofocus's own
(:mod:`monai_components`), named in ``required_packages_version``: MONAI's sliding window would
bring the tile seams back into attention maps. Scans are read with MONAI's ``LoadImaged`` and put in
napari's axis order (``Orientationd`` to SPL), so the bundle's labels are ``predict``'s labels.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from napari_autofocus.errors import AutofocusError
from napari_autofocus.exchange.package_import import EXPORT_MARKER

BUNDLE_SUFFIX = "_monai_bundle"
SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
)
FILES = (
    "configs/metadata.json",
    "configs/inference.json",
    "models/model.pt",
    "docs/README.md",
    "docs/license.txt",
)


def bundle_path(out_dir: str | Path, name: str) -> Path:
    return Path(out_dir) / f"{name}{BUNDLE_SUFFIX}"


def bundle_marker(folder: Path) -> dict | None:
    """Our record in a bundle's metadata.json, or None for a folder this tool did not write."""
    meta = folder / "configs" / "metadata.json"
    if meta.is_symlink() or not meta.is_file():
        return None
    try:
        record = json.loads(meta.read_text(encoding="utf-8")) if meta.stat().st_size < 4 * 2**20 else None
    except (OSError, ValueError, RecursionError):
        return None
    ours = record.get(EXPORT_MARKER) if isinstance(record, dict) else None
    return ours if isinstance(ours, dict) and ours.get("files") == list(FILES) else None


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def export_monai_bundle(
    model_path: str | Path, out_dir: str | Path, *, name: str | None = None, force: bool = False, **hints
) -> Path:
    """Write ``OUT/<name>_monai_bundle/``; returns its path. An existing folder is replaced only with
    ``force``, only when this tool wrote it and only when it holds nothing else."""
    import torch

    from napari_autofocus.nets.checkpoints import load_model

    net, card = load_model(model_path, **hints)
    if card.target_spacing is not None:
        raise AutofocusError(
            f"{Path(model_path).name} resamples its inputs to {card.target_spacing} mm; MONAI bundles of "
            "such models are not supported yet (resample the scans first, or use the bioimage.io export)"
        )
    name = name or Path(model_path).name.split(".")[0]
    target = bundle_path(out_dir, name)
    _check_target(target, force)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out_dir))
    try:
        for sub in ("configs", "models", "docs"):
            (staging / sub).mkdir()
        torch.save(net.state_dict(), staging / "models" / "model.pt")
        _write_json(staging / "configs" / "metadata.json", bundle_metadata(name, card, net))
        _write_json(staging / "configs" / "inference.json", inference_config(card))
        from napari_autofocus.exchange.package_docs import bundle_readme, licence_text

        (staging / "docs" / "README.md").write_text(bundle_readme(name, card, net), encoding="utf-8")
        (staging / "docs" / "license.txt").write_text(licence_text(card), encoding="utf-8")
        if target.exists():
            _remove_own(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)  # our own temporary folder (mkdtemp made it)
    return target


def _check_target(target: Path, force: bool) -> None:
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise AutofocusError(f"{target} exists; pass --force to replace a bundle this tool exported")
    if target.is_symlink() or not target.is_dir() or bundle_marker(target) is None:
        raise AutofocusError(f"{target} exists and is not a bundle napari-autofocus exported: it is kept")
    extra = sorted(
        str(p.relative_to(target))
        for p in target.rglob("*")
        if p.is_file() and str(p.relative_to(target)) not in FILES
    )
    if extra:
        raise AutofocusError(
            f"{target} holds files this tool did not write ({', '.join(extra[:3])}): it is kept"
        )


def _remove_own(target: Path) -> None:
    """Delete the files this tool wrote (checked by :func:`_check_target`) and the emptied folders."""
    for name in FILES:
        (target / name).unlink(missing_ok=True)
    for sub in ("configs", "models", "docs"):
        folder = target / sub
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    target.rmdir()


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def bundle_metadata(name: str, card, net) -> dict:
    from napari_autofocus import __version__
    from napari_autofocus.exchange.package_docs import PAPER, authors_of

    minimum, margin = int(net.min_input_size), int(net.margin)
    multiple = int(net.input_multiple)
    step = 16 * multiple
    channels = card.modalities or [f"channel {i}" for i in range(card.in_channels)]
    classes = {str(i): card.class_names.get(str(i), f"class {i}") for i in range(card.num_classes)}
    return {
        "schema": SCHEMA,
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by napari-autofocus {__version__}"},
        "monai_version": _version("monai"),
        "pytorch_version": _version("torch"),
        "numpy_version": _version("numpy"),
        "required_packages_version": {"napari-autofocus": __version__, "nibabel": _version("nibabel")},
        "optional_packages_version": {},
        "name": name,
        "task": "3D semantic segmentation with autofocus layers (attention over dilation rates)",
        "description": card.description or f"{card.arch} segmentation network",
        "authors": ", ".join(authors_of(card)),
        "copyright": "Copyright (c) napari-autofocus contributors",
        "data_source": card.provenance.get("dataset", "not recorded"),
        "data_type": "nibabel",
        "image_classes": f"{card.in_channels} channel(s): {', '.join(channels)}",
        "label_classes": ", ".join(f"{k}: {v}" for k, v in classes.items()),
        "pred_classes": ", ".join(f"{k}: {v}" for k, v in classes.items()),
        "eval_metrics": {k: v for k, v in card.metrics.items() if isinstance(v, int | float)},
        "intended_use": "Teaching and inspecting autofocus networks; not for clinical use.",
        "references": [f"{PAPER['text']} {PAPER['url']}"],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR" if card.in_channels == 4 else "unknown",
                    "num_channels": card.in_channels,
                    "spatial_shape": [f"{minimum + (-minimum) % multiple}+{step}*n"] * 3,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): c for i, c in enumerate(channels)},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": card.num_classes,
                    "spatial_shape": [f"input - {2 * margin}"] * 3,
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": classes,
                }
            },
        },
        EXPORT_MARKER: {"card": json.loads(card.to_json()), "files": list(FILES)},
    }


def inference_config(card) -> dict:
    """``configs/inference.json``: read every NIfTI in ``dataset_dir``, write ``<case>_seg.nii.gz``."""
    from napari_autofocus.inference.normalization import padding_value

    orientation = {"_target_": "Orientationd", "keys": "image", "axcodes": "SPL"}
    orientation["labels"] = [["L", "R"], ["P", "A"], ["I", "S"]]
    return {
        "imports": ["$import glob", "$import os", "$import napari_autofocus.exchange.monai_components"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "dataset_dir": "$@bundle_root + '/sample'",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))",
        "network_def": {
            "_target_": "napari_autofocus.nets.networks.build_network",
            "arch": card.arch,
            "in_channels": card.in_channels,
            "num_classes": card.num_classes,
            **json.loads(json.dumps(card.options)),
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                orientation,
                {
                    "_target_": "napari_autofocus.exchange.monai_components.NormalizeAsCard",
                    "keys": "image",
                    "normalization": card.normalization,
                },
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': path} for path in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
        "inferer": {
            "_target_": "napari_autofocus.exchange.monai_components.ExactInferer",
            "pad_value": padding_value(card.normalization),
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {  # back to the file's own axis order and affine
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "image",
                    "nearest_interp": True,
                },
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "seg",
                    "output_dtype": "$numpy.uint8",
                    "resample": False,
                    "separate_folder": False,
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
                "strict": True,
            }
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": False,
        },
        "initialize": ["$monai.utils.set_determinism(seed=0)"],
        "run": ["$@evaluator.run()"],
    }
