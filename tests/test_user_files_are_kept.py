"""A tool deletes or replaces only what it can prove it wrote: every user file keeps its bytes.

Each test hashes every file under the folders involved before and after the command; predict,
Export and evaluate must refuse (one clear line) instead of touching a file they did not write.
"""

import hashlib
import json
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from phantom_configs import PHANTOM_40

from napari_autofocus.errors import AutofocusError, DatasetError
from napari_autofocus.io import prediction_files as files
from napari_autofocus.nets import build_network, save_model
from src_training.cli import main
from src_training.data import open_dataset
from src_training.phantom_cases import write_dataset

AFFINE = np.eye(4)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(build_network("AFN1", 2, 3, channels=(4,) * 8), path, modalities=["T1-like", "T2-like"])
    return path


def _scan(path):
    data = np.zeros((24, 24, 24, 2), np.float32)
    data[4:20, 4:20, 4:20] = np.random.default_rng(0).normal(100, 10, size=(16, 16, 16, 2))
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def hashes(*folders):
    """Every file under ``folders`` (hidden ones too) -> sha256 of its bytes."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _predict(model_file, inputs, out, *extra):
    return main(
        ["predict", "--model", str(model_file), "--input", *map(str, inputs), "--out", str(out), *extra]
    )


def _killed_write(monkeypatch, model_file, scan, out):
    """A predict of ``scan`` SIGKILLed after moving its first output into ``out`` (no cleanup ran)."""
    real_replace, moved = files.os.replace, []

    def dies_after_one(src, dst):
        if moved:
            raise KeyboardInterrupt
        moved.append(dst)
        real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(files, "os", SimpleNamespace(replace=dies_after_one))
        patch.setattr(files.shutil, "rmtree", lambda *a, **k: None)
        assert _predict(model_file, [scan], out) == 130
    return moved


# -- item 1: staging folders are matched exactly, never by prefix ------------------------------------


def test_a_killed_write_of_another_case_never_deletes_a_users_file(tmp_path, model_file, monkeypatch, capsys):
    out = tmp_path / "pred"
    out.mkdir()
    _scan(out / "sub-01.nii.gz")  # the user's own file, named like the labels of case sub-01
    backup = out / ".sub-01-backup"  # a user's hidden folder that starts like an old staging folder
    backup.mkdir()
    (backup / "data.txt").write_text("keep me")
    moved = _killed_write(monkeypatch, model_file, _scan(tmp_path / "sub-01-b.nii.gz"), out)
    assert moved and [p for p in out.iterdir() if p.name.startswith(".napari-autofocus-staging-")]
    user = {k: v for k, v in hashes(out).items() if "sub-01-b" not in k and "staging" not in k}
    assert _predict(model_file, [_scan(tmp_path / "sub-01.nii.gz")], out) == 2
    assert "already have outputs" in capsys.readouterr().err
    assert _predict(model_file, [tmp_path / "sub-01.nii.gz"], out, "--force") == 2
    assert "is not an output of napari-autofocus" in capsys.readouterr().err
    after = hashes(out)
    assert all(after.get(path) == digest for path, digest in user.items())
    # the killed case itself is written again whole: only what its own marker says was moved is removed
    assert _predict(model_file, [tmp_path / "sub-01-b.nii.gz"], out) == 0
    assert all(hashes(out).get(path) == digest for path, digest in user.items())
    assert not [p for p in out.iterdir() if p.name.startswith(".napari-autofocus-staging-")]


def test_a_staging_folder_without_our_marker_or_of_another_stem_is_left_alone(tmp_path, model_file):
    out = tmp_path / "pred"
    lookalike = out / f"{files.STAGING_PREFIX}{'0' * 32}"  # our name pattern, but no marker: not ours
    lookalike.mkdir(parents=True)
    (lookalike / "case.nii.gz").write_bytes(b"user data")
    other = out / f"{files.STAGING_PREFIX}{'1' * 32}"
    other.mkdir()
    marker = {"written_by": files.WRITTEN_BY, "stem": "case-2", "outputs": ["case-2.nii.gz"], "moving": True}
    (other / files.STAGING_MARKER).write_text(json.dumps(marker))
    before = hashes(out)
    assert not files.interrupted(out, "case") and files.leftovers(out, "case") == []
    assert _predict(model_file, [_scan(tmp_path / "case.nii.gz")], out) == 0
    after = hashes(out)
    assert all(after[path] == digest for path, digest in before.items())


def test_a_write_killed_before_its_marker_is_cleaned_up_by_the_next_write_of_its_stem(tmp_path, model_file):
    """Killed between creating the staging folder and publishing its marker: the folder's name
    says which stem it is for, and it holds nothing or only the marker's temporary file."""
    out = tmp_path / "pred"
    tag = files.stem_tag("case")
    empty = out / f"{files.STAGING_PREFIX}{'a' * 16}{tag}"
    empty.mkdir(parents=True)
    half = out / f"{files.STAGING_PREFIX}{'b' * 16}{tag}"
    half.mkdir()
    (half / f".{files.STAGING_MARKER}.x1y2z3.tmp").write_text('{"written_by"')
    kept = out / f"{files.STAGING_PREFIX}{'c' * 16}{tag}"  # this stem's name, but a file that is not ours
    kept.mkdir()
    (kept / "case.nii.gz").write_bytes(b"user data")
    other = out / f"{files.STAGING_PREFIX}{'d' * 16}{files.stem_tag('case-2')}"  # another stem's
    other.mkdir()
    assert len(files.new_staging_name("case")) == len(empty.name)
    assert files.new_staging_name("case").endswith(tag) and files.unmarked_staging_folders(out, "case") == [
        empty,
        half,
    ]
    before = hashes(out)
    assert _predict(model_file, [_scan(tmp_path / "case.nii.gz")], out) == 0
    assert not empty.exists() and not half.exists() and kept.is_dir() and other.is_dir()
    after = hashes(out)
    assert all(after[path] == digest for path, digest in before.items() if "x1y2z3" not in path)


def test_a_forged_prediction_json_cannot_make_force_delete_other_files(tmp_path, model_file):
    out = tmp_path / "pred"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "other.nii.gz").write_bytes(b"mine too")
    forged = {
        "written_by": files.WRITTEN_BY,
        "outputs": ["notes.txt", "../outside.txt", "other.nii.gz", "case_prediction.json"],
    }
    (out / "case_prediction.json").write_text(json.dumps(forged))
    (tmp_path / "outside.txt").write_text("outside")
    before = hashes(tmp_path)
    assert _predict(model_file, [_scan(tmp_path / "case.nii.gz")], out, "--force") == 0
    after = hashes(tmp_path)
    for name in ("notes.txt", "other.nii.gz"):
        assert after[str(out / name)] == before[str(out / name)]
    assert after[str(tmp_path / "outside.txt")] == before[str(tmp_path / "outside.txt")]


def test_force_replaces_this_tools_outputs_and_removes_only_those_it_listed(tmp_path, model_file):
    out, scan = tmp_path / "pred", _scan(tmp_path / "case.nii.gz")
    assert _predict(model_file, [scan], out, "--attention") == 0
    first = json.loads((out / "case_prediction.json").read_text())
    assert first["written_by"] == "napari-autofocus" and "case_AF1_attention.nii.gz" in first["outputs"]
    (out / "case_notes.txt").write_text("mine")
    assert _predict(model_file, [scan], out, "--force") == 0  # no attention this time
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["case.nii.gz", "case_prediction.json", "case_notes.txt"])


def test_export_never_replaces_a_file_it_did_not_write(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "scan.nii.gz").write_bytes(b"the user's scan")
    before = hashes(out)
    geometry = SimpleNamespace()
    labels = files.OutputFile("scan.nii.gz", lambda: np.zeros((2, 2, 2), np.uint8), is_label=True)
    with pytest.raises(AutofocusError, match="scan.nii.gz is not an output of napari-autofocus"):
        files.write_outputs(out, "scan", [labels], geometry, {}, overwrite=True)
    assert hashes(out) == before


# -- item 2: --out equal to the input folder --------------------------------------------------------------


def test_out_equal_to_a_decathlon_input_folder_is_refused_even_with_force(tmp_path, model_file, capsys):
    ds = write_dataset(tmp_path / "ds", 3, 0, PHANTOM_40, layout="msd")
    images = ds / "imagesTr"
    before = hashes(ds)
    assert _predict(model_file, [images], images, "--force") == 2
    err = capsys.readouterr().err
    assert "is the folder of the input" in err and "would replace it" in err
    assert hashes(ds) == before


def test_out_equal_to_an_nnunet_input_folder_is_allowed_when_no_name_collides(tmp_path, model_file):
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    data = np.asarray(nib.load(_scan(tmp_path / "s.nii.gz")).dataobj)
    for c in range(2):
        nib.save(nib.Nifti1Image(data[..., c], AFFINE), str(folder / f"case_{c:04d}.nii.gz"))
    before = hashes(folder)
    assert _predict(model_file, [folder], folder) == 0
    after = hashes(folder)
    assert all(after[path] == digest for path, digest in before.items())
    assert (folder / "case.nii.gz").is_file()


# -- item 3: two cases of one name ------------------------------------------------------------------------


def test_duplicate_case_names_across_folders_are_refused_with_both_paths(tmp_path, model_file, capsys):
    ds = write_dataset(tmp_path / "ds", 3, 0, PHANTOM_40, layout="msd")
    meta = json.loads((ds / "dataset.json").read_text())
    entry = meta["training"][2]
    (ds / "more").mkdir()
    first = meta["training"][0]["image"].split("/")[-1]
    for key in ("image", "label"):
        source = ds / entry[key]
        (ds / "more" / key).mkdir()
        (ds / "more" / key / first).write_bytes(source.read_bytes())
        entry[key] = f"./more/{key}/{first}"
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="two training entries are both named") as info:
        open_dataset(ds)
    assert str(ds / "imagesTr" / first) in str(info.value) and str(ds / "more" / "image" / first) in str(
        info.value
    )
    before = hashes(ds)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model_file), "--data", str(ds), "--out", str(out)]) == 2
    assert "two training entries are both named" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--data", str(ds), "--out", str(run), "--epochs", "1", "--device", "cpu"]) == 2
    assert "two training entries are both named" in capsys.readouterr().err  # never 2 of 3 cases silently
    assert not out.exists() and hashes(ds) == before


def test_evaluate_replaces_its_own_predictions_but_never_a_users_file(tmp_path, model_file, capsys):
    ds = write_dataset(tmp_path / "ds", 2, 0, PHANTOM_40, layout="msd")
    out = tmp_path / "eval"
    argv = ["evaluate", "--model", str(model_file), "--data", str(ds), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert main(argv) == 0  # its own predictions are replaced
    case = open_dataset(ds).cases[0].name
    (out / "predictions" / f"{case}.nii.gz").write_bytes(b"the user's own file")
    (out / "predictions" / f"{case}_prediction.json").unlink()
    before = hashes(out / "predictions")
    assert main(argv) == 2
    assert "is not an output of napari-autofocus" in capsys.readouterr().err
    assert hashes(out / "predictions") == before
