"""One prediction path: a model trained with --spacing gives the same labels through ``predict``,
the Segment widget and ``evaluate --model``; the validation Dice in the run log is what ``evaluate``
reports; ``predict``'s files are what ``evaluate --pred`` reads; training settings are checked
before anything is written; runs resume after a failed setting or a move; the card's command replays."""

import json
import shlex
import shutil

import numpy as np
import pytest
from phantom_configs import PHANTOM_48, tiny_train_argv

from napari_autofocus.io.nifti import load_nifti
from napari_autofocus.nets.card import read_card
from src_training.cli import build_parser, main
from src_training.config import resolve
from src_training.phantom_cases import write_dataset

TINY = PHANTOM_48


def _train_args(ds, out, cache, *extra):
    return tiny_train_argv(
        ds, out, cache, "--arch", "AFN1", "--lr", "3e-3", *extra, batch_size=4, iters_per_epoch=6, val_cases=2
    )


@pytest.fixture(scope="module")
def spacing_run(tmp_path_factory):
    """A tiny AFN1 trained on 1 mm phantoms resampled to 1.5 mm."""
    root = tmp_path_factory.mktemp("spacing")
    ds = write_dataset(root / "ds", 4, 0, TINY, layout="msd")
    out = root / "run"
    argv = _train_args(ds, out, root / "cache", "--epochs", "2", "--spacing", "1.5", "1.5", "1.5")
    assert main(argv) == 0
    return ds, out


def test_a_spacing_model_gives_the_same_labels_through_every_caller(
    spacing_run, tmp_path, capsys, make_napari_viewer, qtbot
):
    from widget_helpers import open_segment, run_and_wait

    ds, run = spacing_run
    card = read_card(run / "model.safetensors")
    assert card.target_spacing == [1.5, 1.5, 1.5] and card.spacing == [1.5, 1.5, 1.5]
    val = json.loads((run / "split.json").read_text())["val"]
    capsys.readouterr()

    # evaluate --model on the run folder: the run's validation cases, from split.json
    assert main(["evaluate", "--model", str(run), "--data", str(ds), "--out", str(tmp_path / "ev"),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert "scoring the run's 2 validation case(s) from split.json" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert sorted(c["case"] for c in metrics["cases"]) == sorted(val)

    # the validation Dice in the log is evaluate's, case for case averaged
    last = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    for name, logged in last["val_dice"].items():
        scored = np.mean([c["classes"][name]["dice"] for c in metrics["cases"]])
        assert logged == pytest.approx(scored, abs=1e-12), name

    # predict on the same case: the same labels, on the scan's own 1 mm grid, with the resampling said
    case = val[0]
    out = tmp_path / "pred"
    image = ds / "imagesTr" / f"{case}.nii.gz"
    assert main(["predict", "--model", str(run), "--input", str(image), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "resampled 1x1x1 mm -> 1.5x1.5x1.5 mm and back" in printed
    predicted = load_nifti(out / f"{case}.nii.gz")
    evaluated = load_nifti(tmp_path / "ev" / "predictions" / f"{case}.nii.gz")
    assert predicted.data.shape == (48, 48, 48)
    np.testing.assert_array_equal(predicted.data, evaluated.data)
    assert len(np.unique(predicted.data)) > 1  # not a trivially empty segmentation
    info = json.loads((out / f"{case}_prediction.json").read_text())
    assert info["preprocessing"]["network_spacing"] == [1.5, 1.5, 1.5] and info["preprocessing"]["resampled"]

    # the Segment widget on the scan opened with the plugin's reader
    viewer = make_napari_viewer()
    viewer.open(str(ds / "imagesTr" / f"{case}.nii.gz"), plugin="napari-autofocus")
    widget = open_segment(viewer, str(run / "model.safetensors"))
    run_and_wait(qtbot, widget, timeout=120000)
    assert widget.result is not None, widget.status.text()
    np.testing.assert_array_equal(widget.result.labels, predicted.data)
    assert widget.result.preprocessing["resampled"]
    assert not widget.mismatch.isHidden() and "resampled to the model's grid" in widget.mismatch.text()
    assert widget.result.provenance()["warnings"] == widget.result.warnings


def test_predict_output_folder_is_what_evaluate_reads(spacing_run, tmp_path, capsys):
    ds, run = spacing_run
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--input", str(ds / "imagesTr"),
                 "--out", str(pred), "--device", "cpu", "--attention"]) == 0  # fmt: skip
    assert main(["evaluate", "--pred", str(pred), "--labels", str(ds / "labelsTr"), "--data", str(ds)]) == 0
    result = json.loads((pred / "metrics.json").read_text())
    assert len(result["cases"]) == 4
    # a second predict into the same folder is refused before any case runs
    capsys.readouterr()
    assert main(["predict", "--model", str(run), "--input", str(ds / "imagesTr"),
                 "--out", str(pred), "--device", "cpu"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "4 case(s) already have outputs" in err
    # --force without --attention removes the earlier run's attention maps of the case
    image = ds / "imagesTr" / "phantom_00000.nii.gz"
    assert main(["predict", "--model", str(run), "--input", str(image), "--out", str(pred), "--force"]) == 0
    assert not list(pred.glob("phantom_00000_AF1_*")) and list(pred.glob("phantom_00001_AF1_*"))


def test_evaluate_on_all_cases_names_the_training_cases(spacing_run, tmp_path, capsys):
    ds, run = spacing_run
    train_cases = json.loads((run / "split.json").read_text())["train"]
    argv = ["evaluate", "--model", str(run / "model.safetensors"), "--data", str(ds), "--out",
            str(tmp_path / "ev"), "--cases", "all", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"2 of the 4 scored case(s) were used to train this model: {', '.join(train_cases)}" in out


def test_every_setting_problem_is_listed_before_anything_is_written(spacing_run, tmp_path, capsys):
    ds, _ = spacing_run
    out = tmp_path / "run"
    argv = _train_args(ds, out, tmp_path / "cache", "--epochs", "1")
    argv[argv.index("--channels") + 1] = "4,4,4"
    argv[argv.index("--patch-size") + 1] = "20"
    argv[argv.index("--val-cases") + 1] = "9"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "3 setting problem(s)" in err
    assert "channels needs 8 values" in err and "validation split" in err
    assert not out.exists()
    argv = _train_args(ds, out, tmp_path / "cache", "--epochs", "1", "--patch-size", "20")
    assert main(argv) == 2
    assert "--patch-size 20: AFN1: input size 20 is unusable; it needs to be >= 29" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_resumes_with_a_corrected_region_convention_and_after_a_move(spacing_run, tmp_path):
    ds, _ = spacing_run
    first = tmp_path / "first"
    args = _train_args(ds, first, tmp_path / "cache", "--epochs", "2", "--val-every", "0")
    assert main([*args, "--stop-after-epochs", "1"]) == 0
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    assert main(["train", "--out", str(moved), "--resume", "--regions", "msd"]) == 0
    card = read_card(moved / "model.safetensors")
    assert card.provenance["epochs"] == 2 and set(card.regions) == {"whole", "core", "enhancing"}


def test_the_card_command_replays(spacing_run):
    _, run = spacing_run
    card = read_card(run / "model.safetensors")
    words = shlex.split(card.provenance["command"])
    assert words[:4] == ["python", "-m", "src_training", "train"]
    args = build_parser(words[3:]).parse_args(words[3:])
    flags = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    replayed = resolve(flags)
    saved = json.loads((run / "config.json").read_text())
    assert replayed.to_dict() == saved
    assert replayed.channels == [4] * 8 and replayed.spacing == [1.5, 1.5, 1.5]
