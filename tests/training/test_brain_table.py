"""benchmarks/brain_table.py: Dice per BraTS region, attention per structure and per tumour size."""

import importlib.util
import json

import numpy as np
from repo_paths import REPO

from napari_autofocus.io.nifti import load_nifti

SPEC = importlib.util.spec_from_file_location("brain_table", REPO / "benchmarks" / "brain_table.py")
brain_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(brain_table)
SAMPLE = REPO / "sample_data" / "brain"


def test_every_labelled_voxel_belongs_to_the_size_class_of_its_tumour():
    truth = load_nifti(SAMPLE / "labelsTr" / "brain_09000.nii.gz")
    tumours = json.loads((SAMPLE / "dataset.json").read_text())["brain_phantom"]["tumours"]["brain_09000"]
    masks = brain_table.tumour_masks(truth.data, tumours, truth.geometry)
    small, medium = masks["small (< 8 mm)"], masks["medium (8-18 mm)"]  # radii 3.4 and 14.8 mm
    assert not (small & medium).any() and ((small | medium) == (truth.data > 0)).all()
    assert 0 < small.sum() < medium.sum() and not masks["large (> 18 mm)"].any()


def test_the_table_scores_regions_and_reports_the_attention_mix(tmp_path, capsys):
    from napari_autofocus.nets import build_network, save_model

    model = tmp_path / "afn1.safetensors"
    save_model(build_network("AFN1", 4, 4, channels=(4,) * 8), model, modalities=["T1", "T1c", "T2", "FLAIR"])
    out = tmp_path / "results.json"
    assert (
        brain_table.main(
            ["--models", str(model), "--data", str(SAMPLE), "--device", "cpu", "--json", str(out), "--record"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "| AFN1 |" in printed and "Dice whole tumour" in printed and "rate in medium (8-18 mm)" in printed
    [result] = json.loads(out.read_text())["results"]
    assert all(0 <= result["summary"][name]["mean"] <= 1 for name in ("whole tumour", "tumour core", "mean"))
    mix = result["weights"]["AF1"]["oedema"]
    assert len(mix) == 4 and np.isclose(sum(mix), 1, atol=0.01)  # the 4 rates' weights sum to one
    assert 2 <= result["expected_rate"]["AF1"]["small (< 8 mm)"] <= 14
    from napari_autofocus.nets.card import read_card

    held_out = read_card(model).metrics["held_out"]  # --record: the numbers travel with the model
    assert held_out["data"] == str(SAMPLE) and held_out["dice"] == result["summary"]
