"""Cohorts: sharding (torchrun and --num-parts), --continue after SIGKILL, --keep-going, the pipeline."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from launcher import torchrun

from napari_autofocus.errors import AutofocusError
from napari_autofocus.nets import build_network, save_model
from src_training.cli import main
from src_training.cohort import CaseFailure, Shard, record_failures, run_pipeline, shard_from

REPO = Path(__file__).resolve().parents[2]
AFFINE = np.diag([1.2, 1.2, 1.5, 1.0])
VOLATILE = {"seconds", "peak_memory_gib"}  # timings: the only JSON fields that differ between runs


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny AFN-2 and a folder of 2-channel cases with zero background (Decathlon 4D files)."""
    root = tmp_path_factory.mktemp("cohort")
    model = build_network("AFN2", 2, 3, channels=(4, 4, 4, 4, 4, 4, 4, 4))
    path = root / "tiny.safetensors"
    save_model(model, path, modalities=["T1-like", "T2-like"], class_names={"0": "bg", "1": "a", "2": "b"})
    images = root / "imagesTs"
    images.mkdir()
    rng = np.random.default_rng(3)
    for i in range(7):
        data = np.zeros((30, 28, 26, 2), np.float32)
        data[4:-4, 4:-4, 4:-4] = rng.normal(100, 20, size=(22, 20, 18, 2))
        nib.save(nib.Nifti1Image(data, AFFINE), str(images / f"case_{i:02d}.nii.gz"))
    return path, images


def predict_args(model, images, out, *extra):
    return [
        "predict",
        "--model",
        str(model),
        "--input",
        str(images),
        "--out",
        str(out),
        "--attention",
        *extra,
    ]


def contents(folder: Path) -> dict:
    """Every output as data: NIfTI arrays and affines, JSON without timings; no hidden files allowed."""
    found = {}
    for path in sorted(folder.iterdir()):
        assert not path.name.startswith("."), f"left behind: {path.name}"
        if path.name.endswith(".json"):
            record = json.loads(path.read_text())
            found[path.name] = {k: v for k, v in record.items() if k not in VOLATILE}
        else:
            image = nib.load(path)
            found[path.name] = (image.affine.tobytes(), np.asarray(image.dataobj).tobytes())
    return found


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory):
    model, images = cohort
    out = tmp_path_factory.mktemp("reference") / "pred"
    assert main(predict_args(model, images, out)) == 0
    return contents(out)


def test_shards_are_interleaved_sorted_names_and_cover_every_case_once():
    names = [f"c{i}" for i in (5, 1, 3, 0, 4, 2, 6)]
    parts = [Shard(i, 3).take(names) for i in range(3)]
    assert parts == [["c0", "c3", "c6"], ["c1", "c4"], ["c2", "c5"]]
    env = {"RANK": "1", "WORLD_SIZE": "2"}
    assert shard_from(3, 2, env) == Shard(5, 6)  # part 2 of 3, rank 1 of 2
    with pytest.raises(AutofocusError, match="--part-id must lie in 0..1"):
        shard_from(2, 2, {})
    with pytest.raises(AutofocusError, match="RANK=3 must lie"):
        shard_from(1, 0, {"RANK": "3", "WORLD_SIZE": "2"})


def test_num_parts_give_the_files_of_one_process(cohort, reference, tmp_path, capsys):
    model, images = cohort
    out = tmp_path / "pred"
    for part in (0, 1):
        assert main(predict_args(model, images, out, "--num-parts", "2", "--part-id", str(part))) == 0
    said = capsys.readouterr().out
    assert "shard 1 of 2: 4 of 7 case(s)" in said and "shard 2 of 2: 3 of 7 case(s)" in said
    assert "cohort: 7/7 cases done" in said  # the second part sees the whole cohort's progress
    assert contents(out) == reference


def test_two_processes_under_torchrun_give_the_files_of_one_process(cohort, reference, tmp_path):
    model, images = cohort
    out = tmp_path / "pred"
    done = torchrun([*predict_args(model, images, out)])
    assert "shard 1 of 2" in done.stdout and "shard 2 of 2" in done.stdout
    assert contents(out) == reference


def test_a_run_killed_mid_cohort_then_continued_gives_the_outputs_of_one_run(cohort, reference, tmp_path):
    model, images = cohort
    out = tmp_path / "pred"
    command = [sys.executable, "-m", "src_training", *predict_args(model, images, out)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*_prediction.json"))) < 2:  # some cases complete, others not
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = len(list(out.glob("*_prediction.json")))
    assert 2 <= complete < 7
    assert main(predict_args(model, images, out)) == 2  # outputs exist: refused without --continue
    assert main(predict_args(model, images, out, "--continue")) == 0
    assert contents(out) == reference


def test_continue_skips_complete_cases_and_refuses_other_settings(cohort, reference, tmp_path, capsys):
    model, images = cohort
    out = tmp_path / "pred"
    assert main(predict_args(model, images, out, "--num-parts", "3", "--part-id", "1")) == 0
    capsys.readouterr()
    assert main(predict_args(model, images, out, "--continue")) == 0
    said = capsys.readouterr().out
    assert "2 of 7 case(s) already complete (--continue): skipped" in said
    assert "5 predicted, 2 already complete" in said
    assert contents(out) == reference
    plain = ["predict", "--model", str(model), "--input", str(images), "--out", str(out), "--continue"]
    assert main(plain) == 2
    err = capsys.readouterr().err
    assert "7 case(s) in" in err and "attention=True, now False" in err and "--force" in err


def test_keep_going_writes_the_other_cases_and_a_failures_file(cohort, tmp_path, capsys):
    model, images = cohort
    folder = tmp_path / "imagesTs"
    folder.mkdir()
    for path in sorted(images.iterdir())[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "case_01.nii.gz").write_bytes((images / "case_01.nii.gz").read_bytes()[:300])  # truncated
    out = tmp_path / "pred"
    assert main(predict_args(model, folder, out)) == 2  # without --keep-going the run stops
    capsys.readouterr()
    assert main(predict_args(model, folder, out, "--keep-going", "--continue")) == 3
    said = capsys.readouterr().out
    assert "failed: case_01" in said and "predict_failures.json" in said
    record = json.loads((out / "predict_failures.json").read_text())
    assert [f["case"] for f in record["failed"]] == ["case_01"]
    assert record["failed"][0]["files"] == [str(folder / "case_01.nii.gz")]
    assert (out / "case_00.nii.gz").is_file() and (out / "case_02.nii.gz").is_file()
    assert not (out / "case_01.nii.gz").exists()
    # fixed and continued: the failures file of this tool goes, as nothing fails any more
    (folder / "case_01.nii.gz").write_bytes((images / "case_01.nii.gz").read_bytes())
    assert main(predict_args(model, folder, out, "--keep-going", "--continue")) == 0
    assert not (out / "predict_failures.json").exists() and (out / "case_01.nii.gz").is_file()


def test_a_failures_file_this_tool_did_not_write_is_kept(tmp_path):
    (tmp_path / "predict_failures.json").write_text('{"mine": true}')
    with pytest.raises(AutofocusError, match="not written by napari-autofocus"):
        record_failures(tmp_path, "predict", Shard(), [CaseFailure("a", [], "bad")])
    assert json.loads((tmp_path / "predict_failures.json").read_text()) == {"mine": True}


def test_the_pipeline_overlaps_stages_keeps_order_and_stops_on_a_failure():
    log = []

    def read(case):
        log.append(("read", case))
        if case == "bad":
            raise AutofocusError("unreadable")
        return case.upper()

    def compute(case, item):
        time.sleep(0.02)
        return item + "!"

    def write(case, result):
        log.append(("write", case, result))

    report = run_pipeline(["a", "b", "c"], read, compute, write)
    assert report.done == ["a", "b", "c"] and ("write", "c", "C!") in log
    assert 0 <= report.idle_fraction < 1 and report.busy_seconds > 0.05
    # the next case is read while the previous one computes
    assert log.index(("read", "b")) < log.index(("write", "a", "A!"))
    log.clear()
    with pytest.raises(AutofocusError, match="unreadable"):
        run_pipeline(["a", "bad", "c"], read, compute, write)
    assert ("write", "c", "C!") not in log
    kept = run_pipeline(["a", "bad", "c"], read, compute, write, keep_going=True, files_of=lambda c: [c])
    assert kept.done == ["a", "c"] and [(f.case, f.reason) for f in kept.failed] == [("bad", "unreadable")]


@pytest.fixture(scope="module")
def labelled(cohort, tmp_path_factory):
    """Five labelled phantom cases (32^3) for evaluate --model."""
    data = tmp_path_factory.mktemp("labelled") / "phantoms"
    assert (
        main(
            [
                "phantom",
                "--out",
                str(data),
                "--cases",
                "5",
                "--size",
                "32",
                "--seed",
                "40",
                "--style",
                "blobs",
            ]
        )
        == 0
    )
    return cohort[0], data


def evaluate_args(model, data, out, *extra):
    return ["evaluate", "--model", str(model), "--data", str(data), "--out", str(out), "--cases", "all",
            "--device", "cpu", *extra]  # fmt: skip


def metrics_of(out: Path, name: str = "metrics") -> list:
    return json.loads((out / f"{name}.json").read_text())["cases"]


def test_evaluate_in_parts_then_continue_equals_one_run(labelled, tmp_path, capsys):
    model, data = labelled
    single = tmp_path / "single"
    assert main(evaluate_args(model, data, single)) == 0
    out = tmp_path / "parts"
    for part in (0, 1):
        assert main(evaluate_args(model, data, out, "--num-parts", "2", "--part-id", str(part))) == 0
    first, second = metrics_of(out, "metrics_part001of002"), metrics_of(out, "metrics_part002of002")
    assert [c["case"] for c in first] == ["phantom_00040", "phantom_00042", "phantom_00044"]
    assert len(second) == 2
    capsys.readouterr()
    assert main(evaluate_args(model, data, out, "--continue")) == 0
    assert "5 of 5 case(s) already predicted (--continue)" in capsys.readouterr().out
    assert metrics_of(out) == metrics_of(single)


def test_evaluate_under_torchrun_writes_the_metrics_of_one_run(labelled, tmp_path):
    model, data = labelled
    single = tmp_path / "single"
    assert main(evaluate_args(model, data, single)) == 0
    out = tmp_path / "ddp"
    torchrun([*evaluate_args(model, data, out)])
    assert metrics_of(out) == metrics_of(single)
    assert sorted(p.name for p in (out / "predictions").glob("*.nii.gz")) == sorted(
        p.name for p in (single / "predictions").glob("*.nii.gz")
    )


def test_evaluate_keep_going_scores_the_readable_cases(labelled, tmp_path, capsys):
    import shutil

    model, data = labelled
    copy = tmp_path / "phantoms"
    shutil.copytree(data, copy)
    broken = next((copy / "imagesTr").glob("phantom_00041*"))
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "ev"
    assert main(evaluate_args(model, copy, out, "--keep-going")) == 3
    assert "failed: phantom_00041" in capsys.readouterr().out
    assert [c["case"] for c in metrics_of(out)] == ["phantom_00040", "phantom_00042", "phantom_00043",
                                                    "phantom_00044"]  # fmt: skip
    record = json.loads((out / "evaluate_failures.json").read_text())
    assert record["failed"][0]["case"] == "phantom_00041"
