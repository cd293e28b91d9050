"""The Qt-free modules behind the widgets: matching, model lists, comparison, counterfactuals, export."""

import json
import subprocess
import sys

import numpy as np
import pytest
from widget_helpers import CLASSES, make_model_file

from napari_autofocus.analysis import agreement, forced_attention
from napari_autofocus.analysis.explorer_maps import argmax_colors, rate_hue, voxel_readout, weight_layer_name
from napari_autofocus.analysis.metrics import dice
from napari_autofocus.app import inputs, model_library
from napari_autofocus.nets.card import ModelCard

L = inputs.LayerInfo


def test_modalities_match_by_channel_name_then_layer_name_then_order():
    layers = [L("b [FLAIR]", (4, 4, 4)), L("a", (4, 4, 4), "T1"), L("x", (4, 4, 4))]
    assert inputs.match_modalities(["T1", "flair"], layers) == {"T1": "a", "flair": "b [FLAIR]"}
    assert inputs.match_modalities(["p", "q"], layers[:2]) == {"p": "b [FLAIR]", "q": "a"}
    assert inputs.match_modalities(["p", "q"], layers) == {"p": None, "q": None}
    assert inputs.modality_names([], 2) == ["channel 0", "channel 1"]


def test_input_problems_are_sentences():
    layers = [L("a", (4, 4, 4)), L("flat", (4, 4)), L("big", (5, 5, 5))]
    assert inputs.input_problems({"x": "a", "y": "big"}, layers) == [
        "The chosen layers have different shapes [(4, 4, 4), (5, 5, 5)]; resample them first."
    ]
    problems = " ".join(inputs.input_problems({"x": "a", "y": "a", "z": None, "w": "flat"}, layers))
    assert "expects 4 input channel(s)" in problems and "Choose an image layer for: z" in problems
    assert "feeds several channels: a" in problems and "segment 3D volumes" in problems


def test_model_library_lists_recent_files_without_torch(tmp_path):
    path = make_model_file(tmp_path / "m.safetensors")
    model_library.remember_model(path)
    model_library.remember_model(path)
    assert [e.path for e in model_library.recent_models()] == [path]
    assert json.loads((tmp_path / "config" / "recent_models.json").read_text())[0]["path"] == path
    assert "AFN2" in model_library.summary(model_library.describe(path))
    code = (
        "import sys\nfrom napari_autofocus.app import model_library, inputs, result_export\n"
        "from napari_autofocus.analysis import agreement, forced_attention\n"
        f"model_library.describe({path!r}); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_arch_choices_match_the_networks():
    from napari_autofocus.nets import ARCHITECTURES

    assert model_library.ARCH_CHOICES[1:] == tuple(ARCHITECTURES)


def test_disagreement_and_dice_table():
    a = np.array([0, 1, 2, 2])
    b = np.array([0, 1, 1, 0])
    c = np.array([0, 2, 0, 2])
    np.testing.assert_array_equal(agreement.disagreement([a, b, c]), [0, 1, 2, 1])
    card = ModelCard("AFN1", 2, 3, class_names=dict(CLASSES), regions={"any": [1, 2]})
    truth = np.array([0, 1, 2, 1])
    table = agreement.dice_table({"a": a, "b": b}, {"a": card, "b": card}, truth)
    assert table.columns == ["small lesion", "large lesion", "any"]
    assert table.value("b", "small lesion") == pytest.approx(dice(b == 1, truth == 1))
    assert table.value("a", "any") == pytest.approx(dice(a > 0, truth > 0))


def test_counterfactual_report_against_truth_or_original():
    original, modified = np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2])
    names = {0: "bg", 1: "one", 2: "two"}
    report = forced_attention.compare_to_reference(original, modified, names)
    assert report.reference == "original prediction" and report.changed_voxels == 1
    assert [r[1] for r in report.rows] == [1.0, 1.0]
    truth = np.array([0, 1, 2, 2])
    report = forced_attention.compare_to_reference(original, modified, names, truth)
    assert report.rows[1] == ("two", dice(original == 2, truth == 2), 1.0)
    assert forced_attention.override_choices([2, 6])[1] == ("only r=2", 0)


def test_attention_views_names_hues_and_readout():
    assert weight_layer_name("AF3", 6) == "AF3 · r=6"
    assert argmax_colors([2, 6])[6] == (*rate_hue(1), 1.0) and argmax_colors([2, 6])[2] == (*rate_hue(0), 1.0)

    class R:
        labels = np.zeros((2, 2, 2), np.uint8)
        attention = {"AF1": np.full((2, 2, 2, 2), 0.5, np.float16)}
        rates = {"AF1": (2, 6)}
        receptive_field_min = 29
        scale = (2.0, 2.0, 2.0)
        network_spacing = (2.0, 2.0, 2.0)

    readout = voxel_readout(R, (1, 1, 1))
    assert readout["zoom_voxels"] == pytest.approx(29 + 2 * (4 - 2))
    assert readout["zoom_mm"] == pytest.approx(2 * readout["zoom_voxels"])
    assert voxel_readout(R, (2, 0, 0)) is None


def test_a_comparison_is_planned_before_anything_runs(tmp_path):
    from napari_autofocus.app.comparison import plan_comparison
    from napari_autofocus.errors import AutofocusError

    a, b = make_model_file(tmp_path / "a.safetensors"), make_model_file(tmp_path / "b.safetensors", "BASIC")
    layers = [L("case [T1-like]", (8, 8, 8)), L("case [T2-like]", (8, 8, 8))]
    plan = plan_comparison([a, b], layers)
    assert [p.name for p in plan] == ["a", "b"]
    assert all(p.layers == ("case [T1-like]", "case [T2-like]") for p in plan)
    with pytest.raises(AutofocusError, match="at least two models"):
        plan_comparison([a], layers)
    with pytest.raises(AutofocusError, match="^a: "):  # which model cannot read the open layers
        plan_comparison([a, b], [L("only one", (8, 8, 8))])
