"""``python -m src_training predict``: NIfTI in, NIfTI out in the source geometry."""

import json

import nibabel as nib
import numpy as np
import pytest

from napari_autofocus.nets import build_network, save_model
from src_training.cli import main

AFFINE = np.array([[-1.5, 0, 0, 90.0], [0, 1.5, 0, -120.0], [0, 0, 2.0, -60.0], [0, 0, 0, 1]])


@pytest.fixture
def model_file(tmp_path):
    model = build_network("AFN2", 2, 3, channels=(4, 4, 4, 4, 4, 4, 4, 4))
    path = tmp_path / "tiny.safetensors"
    save_model(model, path, modalities=["T1-like", "T2-like"], class_names={"0": "bg", "1": "a", "2": "b"})
    return path


def _case(tmp_path, name="case", shape=(21, 18, 15)):
    data = np.random.default_rng(0).normal(100, 20, size=(*shape, 2)).astype(np.float32)
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def test_predict_writes_labels_attention_and_json_in_the_source_geometry(tmp_path, model_file, capsys):
    case = _case(tmp_path)
    out = tmp_path / "out"
    args = ["predict", "--model", str(model_file), "--input", str(case), "--out", str(out), "--attention"]
    assert main(args) == 0
    labels = nib.load(out / "case.nii.gz")
    assert labels.shape == (21, 18, 15)
    np.testing.assert_allclose(labels.affine, AFFINE)
    attention = nib.load(out / "case_AF1_attention.nii.gz")
    assert attention.shape == (21, 18, 15, 4)
    np.testing.assert_allclose(attention.get_fdata().sum(-1), 1.0, atol=2e-3)  # float16 storage
    for name in ("AF2_expected_rate", "AF1_argmax_rate", "AF1_entropy", "zoom_mm"):
        img = nib.load(out / f"case_{name}.nii.gz")
        assert img.shape == (21, 18, 15)
        np.testing.assert_allclose(img.affine, AFFINE)
    zoom = nib.load(out / "case_zoom_mm.nii.gz").get_fdata()
    assert zoom.min() >= 29 * (1.5 * 1.5 * 2.0) ** (1 / 3) - 1e-3
    info = json.loads((out / "case_prediction.json").read_text())
    assert info["model_card"]["arch"] == "AFN2" and "case.nii.gz" in info["outputs"]
    # the scan has no zero background, which the card's normalisation expects: said and recorded
    assert "warning: the scan has no zero background" in capsys.readouterr().out
    assert any("no zero background" in w for w in info["warnings"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_predict_refuses_to_overwrite_and_explains_channel_mismatch(tmp_path, model_file, capsys):
    case = _case(tmp_path)
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_file), "--input", str(case), "--out", str(out)]) == 0
    before = (out / "case.nii.gz").read_bytes()
    assert main(["predict", "--model", str(model_file), "--input", str(case), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "case.nii.gz").read_bytes() == before
    single = tmp_path / "single.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.float32), AFFINE), str(single))
    args = ["predict", "--model", str(model_file), "--input", str(single), "--out", str(tmp_path / "o2")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "expects 2 input channel(s) (T1-like, T2-like) but got 1" in err
    assert not (tmp_path / "o2").exists()  # a refused run leaves no empty folder behind


def test_predict_a_folder_of_nnunet_cases(tmp_path, model_file):
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for case in ("a", "b"):
        for c in range(2):
            data = np.random.default_rng(c).normal(size=(16, 16, 16)).astype(np.float32)
            nib.save(nib.Nifti1Image(data, AFFINE), str(folder / f"{case}_{c:04d}.nii.gz"))
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_file), "--input", str(folder), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["a.nii.gz", "b.nii.gz"]  # nnU-Net's names


def test_predict_crops_to_the_foreground_unless_told_not_to(tmp_path, model_file, capsys):
    data = np.zeros((30, 26, 22, 2), np.float32)
    data[6:20, 5:21, 4:15] = np.random.default_rng(3).normal(100, 20, size=(14, 16, 11, 2))
    case = tmp_path / "brain.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(case))
    base = ["predict", "--model", str(model_file), "--input", str(case), "--attention"]
    assert main([*base, "--out", str(tmp_path / "cropped")]) == 0
    # arrays are (z, y, x): the file's (x, y, z) box reversed
    assert "cropped to the foreground box 11x16x14" in capsys.readouterr().out
    info = json.loads((tmp_path / "cropped" / "brain_prediction.json").read_text())
    assert info["mode"] == "whole" and info["computed_box"] == [[4, 15], [5, 21], [6, 20]]
    rate = nib.load(tmp_path / "cropped" / "brain_AF1_expected_rate.nii.gz").get_fdata()
    assert np.isfinite(rate[6:20, 5:21, 4:15]).all() and np.isnan(rate[:6]).all()

    assert main([*base, "--out", str(tmp_path / "whole"), "--no-crop", "--mode", "whole"]) == 0
    assert "whole volume 22x26x30" in capsys.readouterr().out
    rate = nib.load(tmp_path / "whole" / "brain_AF1_expected_rate.nii.gz").get_fdata()
    assert np.isfinite(rate).all()

    assert main([*base, "--out", str(tmp_path / "ref"), "--mode", "reference"]) == 0
    assert "1 reference tiles" in capsys.readouterr().out


def test_attention_with_a_model_without_autofocus_layers_says_so(tmp_path, capsys):
    path = tmp_path / "basic.safetensors"
    save_model(build_network("BASIC", 2, 3, channels=(4,) * 8), path, modalities=["T1-like", "T2-like"])
    case = _case(tmp_path)
    assert (
        main(
            [
                "predict",
                "--model",
                str(path),
                "--input",
                str(case),
                "--out",
                str(tmp_path / "o"),
                "--attention",
            ]
        )
        == 0
    )
    assert "BASIC has no autofocus layer, so --attention writes no attention maps" in capsys.readouterr().out
    assert (tmp_path / "o" / "case.nii.gz").exists()


def test_a_single_nnunet_file_keeps_its_case_name_without_0000(tmp_path, model_file):
    data = np.random.default_rng(1).normal(size=(16, 16, 16, 2)).astype(np.float32)
    path = tmp_path / "mni001_0000.nii.gz"
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_file), "--input", str(path), "--out", str(out)]) == 0
    assert (out / "mni001.nii.gz").exists() and (out / "mni001_prediction.json").exists()


def test_channel_files_named_like_other_modalities_are_flagged(tmp_path, model_file, capsys):
    rng = np.random.default_rng(2)
    files = []
    for name in ("scan_t2", "scan_t1"):  # given in the wrong order
        data = np.zeros((16, 16, 16), np.float32)
        data[4:12, 4:12, 4:12] = rng.normal(100, 10, size=(8, 8, 8))
        nib.save(nib.Nifti1Image(data, AFFINE), str(tmp_path / f"{name}.nii.gz"))
        files.append(str(tmp_path / f"{name}.nii.gz"))
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_file), "--input", *files, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "warning: channels may be in the wrong order (the model expects T1-like, T2-like)" in printed
