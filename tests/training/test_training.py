"""Training runs on a tiny phantom dataset: run folder, exact resume, evaluation, configuration."""

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from phantom_configs import PHANTOM_48, tiny_train_argv
from repo_paths import REPO

from napari_autofocus.analysis import metrics
from napari_autofocus.errors import AutofocusError
from napari_autofocus.nets import build_network, load_model
from src_training.cli import build_parser, main
from src_training.config import check_resume_changes, resolve
from src_training.optim import lr_factor
from src_training.phantom_cases import write_dataset
from src_training.trainer import Trainer, split_cases

TINY = PHANTOM_48


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return write_dataset(root / "ds", 4, 0, TINY, layout="msd"), root / "cache"


def train(data, out, *extra):
    ds, cache = data
    return main(tiny_train_argv(ds, out, cache, *extra))


def test_tiny_network_geometry():
    net = build_network("AFN1", 2, 3, channels=(4,) * 8)
    assert net.output_size(33) == 5 and net.margin == 14


def test_run_folder_is_complete(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(data, out, "--arch", "AFN1", "--epochs", "2", "--seed", "3") == 0
    names = {p.name for p in out.iterdir()}
    for name in ("config.json", "log.csv", "log.jsonl", "progress.png", "checkpoint_latest.pt",
                 "checkpoint_best.pt", "checkpoint_final.pt", "model.safetensors", "split.json"):  # fmt: skip
        assert name in names, name
    config = json.loads((out / "config.json").read_text())
    assert (config["patch_size"], config["batch_size"], config["optimizer"], config["lr"]) == (
        33,
        2,
        "rmsprop",
        1e-3,
    )
    assert config["rmsprop_alpha"] == 0.9 and config["momentum"] == 0.6 and config["seed"] == 3
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2] and [r["iteration"] for r in log] == [2, 4]
    assert all(
        len(r["iteration_losses"]) == 2 and set(r["val_dice"]) == {"small lesion", "large lesion"}
        for r in log
    )
    # poly LR per iteration: the last of 4 iterations ran at 1e-3 * (1 - 3/4)^0.9
    assert log[-1]["lr"] == pytest.approx(1e-3 * 0.25**0.9)
    assert (out / "log.csv").read_text().splitlines()[0].startswith("epoch,iteration,train_loss,lr")
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 3

    model, card = load_model(out / "model.safetensors")
    assert card.arch == "AFN1" and card.modalities == ["T1-like", "T2-like"]
    assert card.class_names == {"0": "background", "1": "small lesion", "2": "large lesion"}
    assert card.normalization["scheme"] == "zscore" and card.spacing == [1.0, 1.0, 1.0]
    assert (
        card.provenance["seed"] == 3 and card.provenance["epochs"] == 2 and card.provenance["iterations"] == 4
    )
    assert card.provenance["dataset"] == "AutofocusPhantom" and "--arch AFN1" in card.provenance["command"]
    best = max(r["val_mean_dice"] for r in log)
    assert card.metrics["best_val_mean_dice"] == pytest.approx(best)

    final = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert final["epoch"] == 2 and final["iteration"] == 4
    state = model.state_dict()
    assert all(torch.equal(state[k], final["model"][k]) for k in state)
    # a non-empty run folder is refused without --resume/--force
    assert train(data, out, "--arch", "AFN1", "--epochs", "2") == 2
    assert "not empty" in capsys.readouterr().err


def test_resume_is_bit_for_bit(data, tmp_path, capsys):
    common = ("--arch", "BASIC", "--epochs", "4", "--val-every", "2", "--seed", "7", "--loss", "ce+dice")
    assert train(data, tmp_path / "full", *common) == 0
    assert train(data, tmp_path / "cut", *common, "--stop-after-epochs", "2", "--workers", "1") == 0
    assert not (tmp_path / "cut" / "checkpoint_final.pt").exists()
    # a --config file given with --resume may not change the recipe either (it is read, then refused)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"lr": 0.5, "epochs": 4}))
    assert train(data, tmp_path / "cut", *common, "--resume", "--config", str(other)) == 2
    assert f"lr in {other} (0.001 -> 0.5)" in capsys.readouterr().err
    assert train(data, tmp_path / "cut", *common, "--resume", "--workers", "1") == 0

    def losses(run):
        return [
            r["iteration_losses"]
            for r in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())
        ]

    assert len(losses("full")) == 4 and losses("cut") == losses("full")
    a = torch.load(tmp_path / "full" / "checkpoint_final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint_final.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _save(array, path, spacing=(1.0, 1.0, 2.0)):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def test_evaluate_folders_by_hand(tmp_path):
    (tmp_path / "pred").mkdir()
    (tmp_path / "lab").mkdir()
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[1:3, 1:3, 1:3] = 1  # 8 voxels of label 1
    truth[4, 4, 4] = 3
    pred = np.zeros_like(truth)
    pred[1:3, 1:3, 1:2] = 1  # 4 voxels, all inside the truth
    pred[4, 4, 4] = 2
    _save(truth, tmp_path / "lab" / "c1.nii.gz")
    _save(pred, tmp_path / "pred" / "c1.nii.gz")
    _save(truth, tmp_path / "lab" / "c2.nii.gz")
    _save(truth, tmp_path / "pred" / "c2.nii.gz")
    argv = ["evaluate", "--pred", str(tmp_path / "pred"), "--labels", str(tmp_path / "lab"),
            "--regions", "msd", "--out", str(tmp_path / "ev")]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    c1 = next(c for c in result["cases"] if c["case"] == "c1")
    assert c1["classes"]["class 1"]["dice"] == pytest.approx(2 * 4 / (4 + 8))
    assert c1["classes"]["class 1"]["sensitivity"] == pytest.approx(0.5)
    assert c1["classes"]["class 1"]["specificity"] == pytest.approx(1.0)
    assert c1["classes"]["class 2"]["dice"] == 0.0 and c1["classes"]["class 2"]["hd95"] is None  # NaN -> null
    # msd regions: whole {1,2,3}: pred 5 voxels, truth 9, overlap 5 -> 10/14; enhancing {3}: missed -> 0
    assert c1["regions"]["whole"]["dice"] == pytest.approx(10 / 14)
    assert c1["regions"]["enhancing"]["dice"] == 0.0
    assert c1["regions"]["core"]["dice"] == pytest.approx(2 / 2)  # {2,3}: pred {444}, truth {444}
    # HD95 of class 1 (in mm, 2 mm along the file's z axis) equals the metrics module on the same arrays
    spacing = c1["spacing"]
    expected = metrics.hd95(
        np.transpose(pred == 1, (2, 1, 0))[:, ::-1, ::-1],
        np.transpose(truth == 1, (2, 1, 0))[:, ::-1, ::-1],
        spacing,
    )
    assert sorted(spacing) == [1.0, 1.0, 2.0]
    assert c1["classes"]["class 1"]["hd95"] == pytest.approx(expected)
    summary = result["summary"]["classes"]["class 1"]["dice"]
    assert summary["mean"] == pytest.approx((2 / 3 + 1) / 2) and summary["n"] == 2
    rows = (tmp_path / "ev" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,group,structure,dice,hd95,sensitivity,specificity")
    assert any(r.startswith("mean,classes,class 1,0.833") for r in rows)


def test_evaluate_model_writes_predictions_with_source_affine(data, tmp_path):
    run = tmp_path / "run"
    assert train(data, run, "--arch", "BASIC", "--epochs", "1", "--val-every", "0") == 0
    ev = tmp_path / "ev"
    ds = data[0]
    argv = ["evaluate", "--model", str(run / "model.safetensors"), "--data", str(ds), "--out", str(ev),
            "--cases", "phantom_00000", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    pred = nib.load(ev / "predictions" / "phantom_00000.nii.gz")
    truth = nib.load(ds / "labelsTr" / "phantom_00000.nii.gz")
    np.testing.assert_allclose(pred.affine, truth.affine)
    p, t = np.asarray(pred.dataobj), np.asarray(truth.dataobj)
    result = json.loads((ev / "metrics.json").read_text())
    got = result["cases"][0]["classes"]["large lesion"]["dice"]
    assert got == pytest.approx(metrics.dice(p == 2, t == 2))


def test_presets_config_file_and_flags(tmp_path):
    c = resolve({"preset": "paper-adam-dice", "data": "d", "out": "o"})
    assert (c.optimizer, c.lr, c.loss, c.batch_size, c.patch_size, c.schedule) == (
        "adam",
        1e-3,
        "dice",
        7,
        75,
        "step",
    )
    assert c.sampling == "per-class"
    f = tmp_path / "c.json"
    f.write_text(
        json.dumps({"preset": "paper-adam-dice", "batch_size": 4, "lr": 5e-4, "data": "d", "out": "o"})
    )
    c = resolve({"config": str(f), "lr": 2e-4})
    assert (c.optimizer, c.batch_size, c.lr) == ("adam", 4, 2e-4)  # file over preset, flag over file
    r = resolve({"data": "d", "out": "o"})
    assert (r.optimizer, r.eps, r.momentum, r.weight_decay, r.loss, r.batch_size) == (
        "rmsprop",
        1e-4,
        0.6,
        1e-4,
        "ce",
        10,
    )
    assert lr_factor(c, 1, 3) == 1.0 and lr_factor(c, 2, 3) == pytest.approx(0.1)  # drop at 2/3 of iterations
    assert lr_factor(r, 50, 100) == pytest.approx(0.5**0.9)
    train_names, val = split_cases([f"c{i}" for i in range(10)], None, 2, 5)
    assert len(val) == 2 and not set(val) & set(train_names)
    folds = [split_cases([f"c{i}" for i in range(10)], None, k, 5)[1] for k in range(5)]
    assert sorted(sum(folds, [])) == sorted(f"c{i}" for i in range(10))


def test_channels_last_is_auto_and_on_for_cpu(data, tmp_path, capsys):
    assert resolve({"data": "d", "out": "o"}).channels_last == "auto"
    assert resolve({"data": "d", "out": "o", "channels_last": True}).channels_last == "on"  # old runs
    assert resolve({"data": "d", "out": "o", "channels_last": False}).channels_last == "off"
    with pytest.raises(AutofocusError, match="--channels-last must be auto, on or off"):
        resolve({"data": "d", "out": "o", "channels_last": "fast"})
    check_resume_changes({"channels_last": True}, {"channels_last": "on"})  # same setting, old spelling
    file = tmp_path / "layout.json"
    file.write_text(json.dumps({"channels_last": "off", "epochs": 9}))
    # a flag wins over the --config file, as when the run is resolved; run options may change
    check_resume_changes({"channels_last": "on", "epochs": 2}, {"config": str(file), "channels_last": "on"})
    with pytest.raises(AutofocusError, match=r"channels_last in .*layout.json \('on' -> 'off'\)"):
        check_resume_changes({"channels_last": True}, {"config": str(file)})
    with pytest.raises(AutofocusError, match="--channels-last"):
        check_resume_changes({"channels_last": False}, {"channels_last": "on"})
    # a bare --channels-last means on; the parser refuses other words
    argv = ["train", "--out", "o", "--channels-last", "--workers", "0"]
    assert build_parser(argv).parse_args(argv).channels_last == "on"
    with pytest.raises(SystemExit) as stop:
        train(data, tmp_path / "bad", "--channels-last", "fast")
    assert stop.value.code == 2 and "invalid choice: 'fast'" in capsys.readouterr().err

    ds, cache = data
    layouts = {}
    for setting in ("auto", "off"):
        config = resolve({"data": str(ds), "out": str(tmp_path / setting), "cache": str(cache),
                          "channels": [4] * 8, "device": "cpu", "channels_last": setting})  # fmt: skip
        trainer = Trainer(config)
        trainer.setup()
        weight = next(p for p in trainer.net.parameters() if p.dim() == 5)
        layouts[setting] = (trainer.channels_last, weight.is_contiguous(memory_format=torch.channels_last_3d))
    assert layouts == {"auto": (True, True), "off": (False, False)}


def test_help_shows_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "torchrun --standalone --nproc_per_node=2" in text and "--resume" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_amp_channels_last(data, tmp_path):
    out = tmp_path / "cuda"
    assert (
        train(
            data, out, "--arch", "AFN1", "--epochs", "1", "--device", "cuda", "--amp", "on", "--channels-last"
        )
        == 0
    )
    log = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    assert all(math.isfinite(v) for v in log["iteration_losses"])


def _gpu_check():
    import importlib.util

    path = REPO / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answer")
def test_gpu_check_without_cuda(capsys):
    assert _gpu_check().main(["--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cuda": False}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_check_on_cuda(capsys):
    argv = ["--json", "--steps", "1", "--batch", "2", "--patch", "57", "--arch", "AFN1", "--no-inference"]
    assert _gpu_check().main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("train_amp_channels_last", "train_fp32_reference", "ddp"):
        assert "error" not in report[key] and report[key]["s_per_step"] > 0, report[key]


def test_a_misspelt_region_convention_is_refused_before_training_starts(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "any"), "--out", str(out), "--regions", "brats2051"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--regions must be one of" in err and "brats2015" in err and "'brats2051'" in err
    assert not out.exists()  # nothing written: the run never started


def test_evaluate_names_the_prediction_files_it_expected(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "lab").mkdir()
    truth = np.zeros((6, 6, 6), np.uint8)
    _save(truth, tmp_path / "lab" / "mni001.nii.gz")
    _save(truth, tmp_path / "pred" / "mni001_labels.nii.gz")
    argv = [
        "evaluate",
        "--pred",
        str(tmp_path / "pred"),
        "--labels",
        str(tmp_path / "lab"),
        "--out",
        str(tmp_path / "ev"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no prediction for 1 labelled case(s): mni001" in err
    assert "mni001.nii.gz or mni001.nii" in err and "found mni001_labels.nii.gz" in err


def test_the_config_is_a_recipe_and_run_options_and_resume_may_change_only_the_options():
    from src_training.config import RECIPE_FIELDS, RESUME_MUTABLE, RUN_FIELDS, TrainConfig, resolve

    assert not RECIPE_FIELDS & RUN_FIELDS and RESUME_MUTABLE == RUN_FIELDS
    assert {"lr", "arch", "seed", "amp", "patch_size"} <= RECIPE_FIELDS
    assert {"out", "epochs", "device", "workers", "ddp_timeout"} <= RUN_FIELDS
    config = resolve({"data": "d", "out": "o", "lr": 0.5, "workers": 0})
    assert config.recipe.lr == 0.5 and config.run.workers == 0 and config.lr == 0.5 and config.out == "o"
    flat = config.to_dict()  # config.json: one flat object, as before the split
    assert set(flat) == RECIPE_FIELDS | RUN_FIELDS and TrainConfig.from_flat(flat) == config
    with pytest.raises(AttributeError, match="no setting 'lrr'"):
        _ = config.lrr


def test_developer_switches_work_but_stay_out_of_help(capsys):
    from src_training.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--stop-after-epochs" not in text and "--debug-checksums" not in text and "--ddp-timeout" in text
