"""Nothing silently wrong, nothing half-written: non-finite data and weights, model cards under the
hash, resume after failed starts and kills, interrupted outputs, and I/O errors as one clear line."""

import errno
import json
import warnings
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from phantom_configs import PHANTOM_40, tiny_train_argv
from repo_paths import GOLDEN

from napari_autofocus.errors import CheckpointError
from napari_autofocus.nets import build_network, load_model, save_model
from napari_autofocus.nets.card import ModelCard
from napari_autofocus.nets.checkpoints import content_sha256, file_sha256
from src_training.cli import main
from src_training.phantom_cases import write_dataset

TINY = PHANTOM_40
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])


def _train_args(ds, out, cache, *extra):
    return tiny_train_argv(ds, out, cache, "--arch", "BASIC", "--val-every", "0", *extra)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("robust") / "ds", 3, 0, TINY, layout="msd")


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(build_network("AFN1", 2, 3, channels=(4,) * 8), path, modalities=["T1-like", "T2-like"])
    return path


def _scan(path, nan=0):
    data = np.zeros((24, 24, 24, 2), np.float32)
    data[4:20, 4:20, 4:20] = np.random.default_rng(0).normal(100, 10, size=(16, 16, 16, 2))
    data.reshape(-1)[np.flatnonzero(data.reshape(-1))[:nan]] = np.nan
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


# -- 1. non-finite data and weights --------------------------------------------------------------------


def test_predict_refuses_nan_voxels_naming_the_file_unless_told(tmp_path, model_file, capsys):
    scan = _scan(tmp_path / "case.nii.gz", nan=260)
    base = ["predict", "--model", str(model_file), "--input", str(scan)]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "case.nii.gz has 260 NaN or infinite voxel(s)" in err and "--nonfinite background" in err
    assert not (tmp_path / "a").exists()
    assert main([*base, "--out", str(tmp_path / "b"), "--nonfinite", "background"]) == 0
    assert "warning: 260 NaN or infinite voxel(s) were set to the background value" in capsys.readouterr().out
    info = json.loads((tmp_path / "b" / "case_prediction.json").read_text())
    assert "260 NaN" in info["warnings"][0]


def test_training_refuses_a_nan_image_before_writing_anything(tmp_path, capsys):
    ds = write_dataset(tmp_path / "ds", 2, 0, TINY, layout="msd")
    image = ds / "imagesTr" / "phantom_00001.nii.gz"
    img = nib.load(image)
    data = np.asarray(img.dataobj).astype(np.float32)
    data[10, 10, 10, 0] = np.inf
    nib.save(nib.Nifti1Image(data, img.affine), str(image))
    out = tmp_path / "run"
    assert main(_train_args(ds, out, tmp_path / "cache", "--epochs", "1")) == 2
    assert "phantom_00001.nii.gz has 1 NaN or infinite voxel(s)" in capsys.readouterr().err
    assert not out.exists()


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
    dataset, tmp_path, monkeypatch, capsys
):
    from src_training import losses

    calls = {"n": 0}
    original = losses.SegmentationLoss.forward

    def poisoned(self, logits, target):
        calls["n"] += 1
        loss = original(self, logits, target)
        return loss * float("nan") if calls["n"] == 3 else loss  # the first step of epoch 2

    monkeypatch.setattr(losses.SegmentationLoss, "forward", poisoned)
    out = tmp_path / "run"
    assert main(_train_args(dataset, out, tmp_path / "cache", "--epochs", "3")) == 2
    err = capsys.readouterr().err
    assert (
        "the training loss became nan at iteration 3 (epoch 2)" in err and "checkpoint_latest.pt keeps" in err
    )
    state = torch.load(out / "checkpoint_latest.pt", weights_only=True)
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )
    assert not (out / "model.safetensors").exists()


def test_nan_weights_are_refused_on_save_and_on_load_even_with_a_recomputed_hash(tmp_path):
    from safetensors.torch import save_file

    model = build_network("BASIC", 2, 3, channels=(4,) * 8)
    with torch.no_grad():
        model.fc.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to save .*NaN or infinite values \(e.g. fc.bias\)"):
        save_model(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    card = ModelCard("BASIC", 2, 3, options=dict(model.options)).to_json()
    weights = content_sha256(tensors)
    meta = {"format": "napari-autofocus-model", "format_version": "1", "model_card": card,
            "content_sha256": weights, "sha256": file_sha256(weights, card)}  # fmt: skip
    save_file(tensors, tmp_path / "forged.safetensors", metadata=meta)
    with pytest.raises(CheckpointError, match="NaN or infinite values"):
        load_model(tmp_path / "forged.safetensors")


def test_evaluate_refuses_a_prediction_file_with_nan(tmp_path, capsys):
    for folder in ("pred", "lab"):
        (tmp_path / folder).mkdir()
    truth = np.zeros((6, 6, 6), np.float32)
    nib.save(nib.Nifti1Image(truth, AFFINE), str(tmp_path / "lab" / "c1.nii.gz"))
    truth[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(truth, AFFINE), str(tmp_path / "pred" / "c1.nii.gz"))
    assert main(["evaluate", "--pred", str(tmp_path / "pred"), "--labels", str(tmp_path / "lab")]) == 2
    assert "case c1: the prediction file holds NaN or infinite values" in capsys.readouterr().err


# -- 2. the card under the hash ------------------------------------------------------------------------


def _rewrite_card(path, change, keep_file_hash=True):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as fh:
        meta = dict(fh.metadata())
    data = json.loads(meta["model_card"])
    change(data)
    meta["model_card"] = json.dumps(data, sort_keys=True)
    if not keep_file_hash:
        del meta["sha256"]
    save_file(load_file(str(path)), str(path), metadata=meta)


def test_an_edited_card_is_refused_and_older_files_say_their_card_is_unprotected(model_file):
    _rewrite_card(model_file, lambda card: card["options"].update(dilations=[1, 1, 1, 1]))
    with pytest.raises(CheckpointError, match="the model card was modified"):
        load_model(model_file)
    _rewrite_card(model_file, lambda card: None, keep_file_hash=False)  # an older file: no card hash
    with pytest.warns(UserWarning, match="its model card is not protected"):
        _, card = load_model(model_file)
    assert "weights only" in card.extra["integrity"]


def test_card_fields_of_the_wrong_type_get_a_clear_error(model_file):
    _rewrite_card(model_file, lambda card: card.update(spacing="1mm", num_classes="3"), keep_file_hash=False)
    with warnings.catch_warnings(), pytest.raises(CheckpointError) as info:
        warnings.simplefilter("ignore")
        load_model(model_file)
    message = str(info.value)
    assert "model card is not valid" in message
    assert "field 'num_classes' must be an integer 2..1000, got '3'" in message
    assert "field 'spacing' must be null or three positive voxel sizes (mm)" in message


@pytest.mark.usefixtures("golden")  # skipped without shared/, failed in CI
def test_a_malformed_reference_checkpoint_gets_a_clear_error(tmp_path):
    golden = next(GOLDEN.glob("Basic*.pth.tar"))
    state = torch.load(golden, map_location="cpu", weights_only=True)["state_dict"]
    key = next(k for k in state if k.endswith("conv1.weight"))
    state[key] = torch.zeros(7)
    path = tmp_path / "bad.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="bad.pth.tar: "):
        load_model(path)


# -- 3. resume -------------------------------------------------------------------------------------------


def test_patches_do_not_depend_on_the_number_of_workers(dataset, tmp_path):
    from torch.utils.data import DataLoader

    from src_training.data import open_dataset
    from src_training.preprocess import prepare_cases
    from src_training.sampling import PatchStream

    ds = open_dataset(dataset)
    cases = prepare_cases(ds, ds.cases, tmp_path / "cache")

    def batches(workers):
        stream = PatchStream(cases, patch=17, out=5, batch_size=2, n_batches=5, seed=3, rank=0, epoch=1)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        return [x for x, _ in loader]

    one, two = batches(0), batches(2)
    assert len(one) == len(two) == 5 and all(torch.equal(a, b) for a, b in zip(one, two, strict=True))


def test_a_folder_left_by_a_failed_start_is_accepted_and_stale_temporary_files_are_cleaned(dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "split.json").write_text("{}")
    (out / ".checkpoint_latest.pt.x1y2.tmp").write_bytes(b"half")
    assert main(_train_args(dataset, out, tmp_path / "cache", "--epochs", "1")) == 0
    assert not list(out.glob(".*")) and (out / "model.safetensors").exists()
    cached = next((tmp_path / "cache").iterdir())
    (cached / ".image.npy.abc.tmp").write_bytes(b"half")
    (cached / "meta.json").unlink()  # as if killed before the entry was complete
    assert main(_train_args(dataset, tmp_path / "run2", tmp_path / "cache", "--epochs", "1")) == 0
    assert not list(cached.glob(".*"))


def test_resume_without_a_checkpoint_says_to_start_again(dataset, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"data": str(dataset), "out": str(out)}))
    assert main(["train", "--out", str(out), "--resume"]) == 2
    assert "run the same command without --resume" in capsys.readouterr().err


# -- 5. interrupted outputs ------------------------------------------------------------------------------


@pytest.mark.parametrize("killed_after", range(7))  # 7 renames: 6 volumes, then the JSON
def test_a_killed_write_leaves_no_complete_looking_case_and_the_next_run_cleans_it(
    tmp_path, model_file, monkeypatch, capsys, killed_after
):
    import napari_autofocus.io.prediction_files as files

    scan = _scan(tmp_path / "case.nii.gz")
    out = tmp_path / "pred"
    real_replace, moved = files.os.replace, []

    def dies_before_a_rename(src, dst):
        if len(moved) == killed_after:
            raise KeyboardInterrupt  # the process dies between two renames
        moved.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(files, "os", SimpleNamespace(replace=dies_before_a_rename))  # only the final renames
    monkeypatch.setattr(files.shutil, "rmtree", lambda *a, **k: None)  # a SIGKILL runs no cleanup
    args = ["predict", "--model", str(model_file), "--input", str(scan), "--out", str(out), "--attention"]
    assert main(args) == 130
    assert len(moved) == killed_after and not (out / "case_prediction.json").exists()
    monkeypatch.undo()
    labels = tmp_path / "labels"
    labels.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24), np.uint8), AFFINE), str(labels / "case.nii.gz"))
    assert main(["evaluate", "--pred", str(out), "--labels", str(labels)]) == 2
    assert "the prediction of 1 case(s) was interrupted while being written (case)" in capsys.readouterr().err
    assert main(args) == 0  # not a clash: the leftovers are removed, the case written whole
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(json.loads((out / "case_prediction.json").read_text())["outputs"])


def test_evaluate_checks_every_label_before_predicting(dataset, tmp_path, model_file, capsys):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    label = ds / "labelsTr" / "phantom_00002.nii.gz"
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 0 + 7, img.affine), str(label))
    argv = ["evaluate", "--model", str(model_file), "--data", str(ds), "--out", str(tmp_path / "ev")]
    assert main(argv) == 2
    assert "nothing was predicted" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


# -- 6. I/O errors -----------------------------------------------------------------------------------


def test_a_full_disk_is_one_line(tmp_path, model_file, monkeypatch, capsys):
    import napari_autofocus.io.atomic as atomic

    def full(tmp, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "publish", full)
    scan = _scan(tmp_path / "case.nii.gz")
    assert (
        main(["predict", "--model", str(model_file), "--input", str(scan), "--out", str(tmp_path / "p")]) == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device (the disk is full" in err
    assert "Traceback" not in err


def test_a_failed_checkpoint_write_is_one_line(dataset, tmp_path, monkeypatch, capsys):
    import src_training.checkpointing as checkpointing

    def broken(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 128 vs 64")

    monkeypatch.setattr(checkpointing.torch, "save", broken)
    assert main(_train_args(dataset, tmp_path / "run", tmp_path / "cache", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "checkpoint_latest.pt: could not write the checkpoint" in err and "Traceback" not in err


def test_dataset_json_channel_keys_and_4d_labels_are_explained(dataset, tmp_path, capsys):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["modality"] = {"T1": "T1-like", "T2": "T2-like"}
    (ds / "dataset.json").write_text(json.dumps(meta))
    assert main(_train_args(ds, tmp_path / "run", tmp_path / "cache", "--epochs", "1")) == 2
    assert "channel keys must be channel numbers" in capsys.readouterr().err
    meta["modality"] = {"0": "T1-like", "1": "T2-like"}
    (ds / "dataset.json").write_text(json.dumps(meta))
    label = ds / "labelsTr" / "phantom_00000.nii.gz"
    img = nib.load(label)
    nib.save(nib.Nifti1Image(np.stack([np.asarray(img.dataobj)] * 2, -1), img.affine), str(label))
    assert main(_train_args(ds, tmp_path / "run", tmp_path / "cache2", "--epochs", "1")) == 2
    assert "a label map is one 3D volume" in capsys.readouterr().err


# -- 4. a memory budget that holds ------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf", "1e-9"])
def test_unusable_memory_budgets_are_refused(tmp_path, model_file, budget, capsys):
    scan = _scan(tmp_path / "case.nii.gz")
    argv = ["predict", "--model", str(model_file), "--input", str(scan), "--out", str(tmp_path / "p"),
            "--memory-gib", budget]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "the memory budget must be a finite number of GiB >= 0.1" in capsys.readouterr().err
    from napari_autofocus.errors import AutofocusError
    from napari_autofocus.inference import predict_volume

    if budget == "1e-9":
        return  # a library caller may force spilling with a tiny budget (tiles keep a minimum size)
    with pytest.raises(AutofocusError, match="memory budget"):
        predict_volume(
            build_network("BASIC", 2, 3, channels=(4,) * 8), np.zeros((2, 8, 8, 8)), memory_budget_gib=budget
        )


def test_bf16_where_the_cpu_has_no_native_bf16_is_refused_by_name(tmp_path, model_file, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    scan = _scan(tmp_path / "case.nii.gz")
    argv = ["predict", "--model", str(model_file), "--input", str(scan), "--out", str(tmp_path / "p"),
            "--device", "cpu", "--precision", "bf16"]  # fmt: skip
    assert main(argv) != 0
    assert "this CPU has no native bf16 (AVX-512 BF16 or AMX)" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_scratch_outputs_equal_in_memory_outputs_and_stream_to_the_same_files(tmp_path, monkeypatch):
    import napari_autofocus.io.nifti as nifti
    import napari_autofocus.io.prediction_files as files
    from napari_autofocus.inference import predict_volume
    from napari_autofocus.io.nifti import load_nifti
    from napari_autofocus.io.scratch import is_scratch

    model = build_network("AFN1", 2, 3, channels=(4,) * 8)
    image = np.zeros((2, 30, 34, 26), np.float32)
    image[:, 4:26, 5:30, 3:22] = np.random.default_rng(1).normal(size=(2, 22, 25, 19))
    kwargs = dict(device="cpu", attention=True, probabilities=True, logits=True)
    memory = predict_volume(model, image, scratch_outputs=False, **kwargs)
    scratch = predict_volume(model, image, scratch_outputs=True, **kwargs)
    assert (
        is_scratch(scratch.labels) and is_scratch(scratch.attention["AF1"]) and not is_scratch(memory.labels)
    )
    for name in ("labels", "probabilities", "logits", "computed"):
        np.testing.assert_array_equal(getattr(memory, name), getattr(scratch, name), err_msg=name)
    np.testing.assert_array_equal(memory.attention["AF1"], scratch.attention["AF1"])

    scan = _scan(tmp_path / "case.nii.gz")
    geometry = load_nifti(scan).geometry
    crop = tuple(slice(0, n) for n in (24, 24, 24))

    def write(folder, prediction):
        outputs = files.output_files(
            "case", labels=prediction.labels[crop], probabilities=None,
            attention={"AF1": prediction.attention["AF1"][(slice(None), *crop)]}, rates=prediction.rates,
            receptive_field_min=29, network_spacing=(1.0, 1.0, 1.0),
        )  # fmt: skip
        return files.write_outputs(folder, "case", outputs, geometry, {})

    small = write(tmp_path / "in_memory", memory)
    monkeypatch.setattr(files, "BIG_ARRAY_BYTES", 0)  # every map derived and written a slab at a time
    monkeypatch.setattr(nifti, "BIG_ARRAY_BYTES", 0)
    streamed = write(tmp_path / "streamed", scratch)
    for a, b in zip(small, streamed, strict=True):
        if a.name.endswith(".nii.gz"):
            x, y = nib.load(a), nib.load(b)
            assert x.get_data_dtype() == y.get_data_dtype() and np.allclose(x.affine, y.affine), a.name
            np.testing.assert_array_equal(np.asanyarray(x.dataobj), np.asanyarray(y.dataobj), err_msg=a.name)
