"""The README's "From Python" example runs as printed, and writes what ``predict`` writes."""

import json
import re

import nibabel as nib
import numpy as np
import pytest
from repo_paths import REPO

from napari_autofocus.errors import AutofocusError


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_predicts_and_saves_the_brain_sample(tmp_path, monkeypatch, capsys):
    (tmp_path / "sample_data").symlink_to(REPO / "sample_data")  # the example's paths are the repo's
    monkeypatch.chdir(tmp_path)
    code = readme_python_example()
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert (
        "(94, 116, 98) ['AF1', 'AF2', 'AF3', 'AF4', 'AF5', 'AF6'] []" in printed
    )  # a fitting model: no warnings
    record = json.loads((tmp_path / "predictions" / "brain_09000_prediction.json").read_text())
    assert record["written_by"] == "napari-autofocus" and record["mode"] == "whole"
    assert record["model_card"]["arch"] == "AFN6"
    for name in record["outputs"]:
        assert (tmp_path / "predictions" / name).is_file(), name
    assert (
        "brain_09000_AF6_attention.nii.gz" in record["outputs"]
        and "brain_09000_zoom_mm.nii.gz" in record["outputs"]
    )
    labels = np.asarray(nib.load(tmp_path / "predictions" / "brain_09000.nii.gz").dataobj)
    truth = np.asarray(nib.load(REPO / "sample_data" / "brain" / "labelsTr" / "brain_09000.nii.gz").dataobj)
    tumour = truth > 0
    assert (
        labels.shape == truth.shape
        and 2 * (tumour & (labels > 0)).sum() / (tumour.sum() + (labels > 0).sum()) > 0.8
    )
    # run again: it refuses to replace the files rather than overwrite them silently
    with pytest.raises(AutofocusError, match="already exist"):
        exec(compile(code, "README.md", "exec"), {})
