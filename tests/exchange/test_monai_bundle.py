"""MONAI bundles: MONAI's own commands check and run them, and the labels are ``predict``'s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_autofocus.errors import AutofocusError
from napari_autofocus.exchange.exchange_input import read_scan, sample_for
from napari_autofocus.exchange.monai_bundle import FILES, export_monai_bundle
from napari_autofocus.inference.predictor import Scan, predict
from napari_autofocus.io.nifti import load_nifti
from napari_autofocus.nets.checkpoints import load_model

pytest.importorskip("monai")
MODELS = Path(__file__).resolve().parents[2] / "sample_data" / "models"
# MONAI's metadata schema is a release file on the web; this machine's tests have no internet.
SCHEMA_ENV = "NAPARI_AUTOFOCUS_MONAI_SCHEMA"


def _monai(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", *args]
    return subprocess.run(command, cwd=bundle, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_monai_bundle(MODELS / "AFN6_brain.safetensors", tmp_path_factory.mktemp("bundles"))


def test_bundle_layout_and_metadata(bundle):
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == sorted(FILES)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == 4 and image["channel_def"]["0"].startswith("T1")
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"]["2"] == "oedema"
    assert meta["required_packages_version"]["napari-autofocus"]
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    assert config["inferer"]["_target_"].endswith("ExactInferer")  # not MONAI's sliding window
    assert "MNI152" in (bundle / "docs" / "license.txt").read_text()
    assert "## Validation" in (bundle / "docs" / "README.md").read_text()


def test_monai_verify_net_in_out(bundle):
    done = _monai(
        bundle,
        "verify_net_in_out",
        "--config_file",
        "configs/inference.json",
        "--meta_file",
        "configs/metadata.json",
        "--net_id",
        "network_def",
        "--device",
        "cpu",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "verified with no error" in done.stdout + done.stderr


def test_monai_verify_metadata(bundle, tmp_path):
    schema = os.environ.get(SCHEMA_ENV)
    if not schema:
        pytest.skip(f"MONAI's metadata schema is downloaded from the web; set {SCHEMA_ENV} to a local copy")
    local = tmp_path / "schema.json"
    shutil.copy(schema, local)
    done = _monai(bundle, "verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(local))
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_bundle_run_gives_predict_labels(bundle, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = sample_for(4)[0]
    shutil.copy(scan, scans / scan.name)
    out = tmp_path / "out"
    done = _monai(
        bundle,
        "run",
        "--config_file",
        "configs/inference.json",
        "--meta_file",
        "configs/metadata.json",
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(scans),
        "--output_dir",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = out / scan.name.replace(".nii.gz", "_seg.nii.gz")
    net, card = load_model(MODELS / "AFN6_brain.safetensors")
    raw, spacing = read_scan(scan)
    ours = predict(net, card, Scan(raw, spacing))[0].labels
    theirs = load_nifti(written)
    assert theirs.data.shape == ours.shape
    assert np.array_equal(theirs.data, ours)
    assert len(np.unique(ours)) == 3  # background, oedema, enhancing rim in this sample
    assert np.allclose(theirs.geometry.source_affine, load_nifti(scan).geometry.source_affine)


def test_bundle_export_keeps_what_it_did_not_write(tmp_path):
    model = MODELS / "BASIC_brain.safetensors"
    first = export_monai_bundle(model, tmp_path)
    with pytest.raises(AutofocusError, match="--force"):
        export_monai_bundle(model, tmp_path)
    assert export_monai_bundle(model, tmp_path, force=True) == first  # ours, nothing else: replaced
    (first / "docs" / "notes.txt").write_text("mine")
    with pytest.raises(AutofocusError, match="did not write.*notes.txt"):
        export_monai_bundle(model, tmp_path, force=True)
    assert (first / "docs" / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "DM_brain_monai_bundle"
    foreign.mkdir()
    (foreign / "data.txt").write_text("a user's folder")
    with pytest.raises(AutofocusError, match="not a bundle napari-autofocus exported"):
        export_monai_bundle(MODELS / "DM_brain.safetensors", tmp_path, force=True)
    assert (foreign / "data.txt").read_text() == "a user's folder"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
