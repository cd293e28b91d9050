"""The core installs and runs without napari or Qt: a clean venv gets the package without extras (torch
pinned as the README says), and `train`, `predict` and `evaluate` run there on a tiny case."""

import os
import shutil
import subprocess
import sys
import venv

from repo_paths import REPO

TORCH_PIN = "torch==2.13.0"  # as in the Makefile and the README
GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "pandas")


def run(python, *args, cwd, timeout=900):
    result = subprocess.run(
        [str(python), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_the_core_installs_and_trains_predicts_evaluates_without_napari_or_qt(tmp_path):
    env = tmp_path / "core-venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    python = env / "bin" / "python"
    source = tmp_path / "source"  # built from a copy: setuptools leaves build/ in the folder it builds
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))  # fmt: skip
    run(python, "-m", "pip", "install", "-q", TORCH_PIN, str(source), cwd=tmp_path)
    missing = run(python, "-c", f"import importlib.util as u; print([m for m in {GUI!r} if u.find_spec(m)])",
                  cwd=tmp_path)  # fmt: skip
    assert missing.strip() == "[]", f"a core install pulled GUI packages: {missing}"

    phantom = ["phantom", "--out", "ds", "--cases", "3", "--size", "40", "--style", "blobs"]
    run(python, "-m", "src_training", *phantom, cwd=tmp_path)
    run(python, "-m", "src_training", "train", "--data", "ds", "--out", "run", "--arch", "AFN1",
        "--channels", "4,4,4,4,4,4,4,4", "--patch-size", "33", "--batch-size", "2", "--iters-per-epoch", "2",
        "--epochs", "1", "--device", "cpu", "--val-cases", "1", "--workers", "0", cwd=tmp_path)  # fmt: skip
    model = tmp_path / "run" / "model.safetensors"
    assert model.is_file()
    case = sorted((tmp_path / "ds" / "imagesTr").glob("*.nii.gz"))[0]
    run(python, "-m", "src_training", "predict", "--model", str(model), "--input", str(case),
        "--out", "pred", cwd=tmp_path)  # fmt: skip
    assert list((tmp_path / "pred").glob("*.nii.gz"))
    out = run(python, "-m", "src_training", "evaluate", "--model", str(model), "--data", "ds", "--out", "ev",
              cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "ev").is_dir() and out
    modules = run(python, "-c", "import sys, src_training.cli, napari_autofocus.app.model_library; "
                  "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                  f"{GUI!r}))", cwd=tmp_path)  # fmt: skip
    assert modules.strip() == "[]"
    assert sys.executable != str(python)
