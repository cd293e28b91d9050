"""Sample data offered under File > Open Sample: a held-out phantom case with its ground truth."""

from __future__ import annotations

from pathlib import Path

from napari_autofocus._reader import prefer_this_reader, volume_layer_data
from napari_autofocus.io.nifti import load_nifti

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
PHANTOM_CASE = "phantom_09000"


def phantom_paths() -> tuple[Path, Path]:
    root = SAMPLE_DIR / "phantom"
    return root / "imagesTr" / f"{PHANTOM_CASE}.nii.gz", root / "labelsTr" / f"{PHANTOM_CASE}.nii.gz"


def load_phantom_sample() -> list[tuple]:
    """Both channels of the sample phantom plus its ground-truth labels, aligned."""
    image_path, label_path = phantom_paths()
    layers = volume_layer_data(load_nifti(image_path), PHANTOM_CASE)
    for _, kwargs, _ in layers:
        kwargs["visible"] = True
    labels = load_nifti(label_path)
    truth = volume_layer_data(labels, f"{PHANTOM_CASE} ground truth")
    truth[0][1]["opacity"] = 0.5
    truth[0][1]["metadata"]["role"] = "ground truth"
    prefer_this_reader()
    return layers + truth
