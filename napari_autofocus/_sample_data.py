"""Sample data offered under File > Open Sample: held-out cases with their ground truth.

``brain``: simulated tumours on the real MNI152 anatomy (four channels, BraTS 2023 labels; the
template's copyright notice is ``sample_data/brain/NOTICE-MNI152.txt``). ``phantom``: the
controlled experiment, whose labels depend on structure size alone.
"""

from __future__ import annotations

from pathlib import Path

from napari_autofocus._reader import prefer_this_reader, volume_layer_data
from napari_autofocus.io.nifti import load_nifti

SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"
PHANTOM_CASE = "phantom_09000"
BRAIN_CASE = "brain_09000"
SAMPLES = {"phantom": ("phantom", PHANTOM_CASE), "brain": ("brain", BRAIN_CASE)}


def sample_paths(key: str) -> tuple[Path, Path]:
    folder, case = SAMPLES[key]
    root = SAMPLE_DIR / folder
    return root / "imagesTr" / f"{case}.nii.gz", root / "labelsTr" / f"{case}.nii.gz"


def phantom_paths() -> tuple[Path, Path]:
    return sample_paths("phantom")


def load_sample(key: str) -> list[tuple]:
    """Every channel of a sample case plus its ground-truth labels, aligned."""
    image_path, label_path = sample_paths(key)
    case = SAMPLES[key][1]
    layers = volume_layer_data(load_nifti(image_path), case)
    for _, kwargs, _ in layers:
        kwargs["visible"] = True
    truth = volume_layer_data(load_nifti(label_path), f"{case} ground truth")
    truth[0][1]["opacity"] = 0.5
    truth[0][1]["metadata"]["role"] = "ground truth"
    prefer_this_reader()
    return layers + truth


def load_phantom_sample() -> list[tuple]:
    return load_sample("phantom")


def load_brain_sample() -> list[tuple]:
    return load_sample("brain")
