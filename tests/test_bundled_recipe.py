"""The recipe of the bundled models: the driver's commands are the ones sample_data/README.md documents."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("train_bundled", REPO / "tools" / "train_bundled_models.py")
train_bundled = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(train_bundled)


def documented_command(arch: str) -> list[str]:
    text = (REPO / "sample_data" / "README.md").read_text().replace("\\\n", " ")
    line = next(
        line for line in text.splitlines() if "src_training train" in line and f"--arch {arch}" in line
    )
    return shlex.split(line)


def test_driver_runs_the_documented_training_command():
    args = train_bundled.parse_args(["--work", "w", "--device", "cuda", "--epochs", "24"])
    command = train_bundled.train_command(args, "AFN6", "runs/AFN6", 24, args.iters_per_epoch, 24 // 4)
    assert ["python", *command[1:]] == documented_command("AFN6")


def test_deepmedic_gets_a_patch_with_a_similar_label_volume():
    from napari_autofocus.nets import build_network

    args = train_bundled.parse_args(["--work", "w"])
    for arch in train_bundled.ARCHS:
        command = train_bundled.train_command(args, arch, f"runs/{arch}", 1, 1, 1)
        patch = int(command[command.index("--patch-size") + 1])
        out = build_network(arch, 2, 3).output_size(patch)
        assert 45 <= out <= 47, (arch, patch, out)  # 47^3 labels for 75^3 patches, 45^3 for DM's 93^3


def test_heldout_cases_zero_skips_the_benchmark_and_prints_how_to_run_it(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    import pytest

    runs = []
    monkeypatch.setattr(train_bundled, "run_all", lambda commands, work, logs: {a: 1.0 for a in commands})
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: runs.append(cmd))
    (tmp_path / "data" / "phantom_train").mkdir(parents=True)
    (tmp_path / "data" / "phantom_train" / "dataset.json").write_text(
        '{"numTraining": 40, "phantom": {"config": {"style": "nodules"}}}'
    )
    base = [
        "--work",
        str(tmp_path),
        "--style",
        "nodules",
        "--archs",
        "AFN6",
        "--epochs",
        "1",
        "--device",
        "cpu",
    ]
    assert train_bundled.main([*base, "--heldout-cases", "0"]) == 0
    assert runs == []  # nothing but the (stubbed) training ran
    printed = capsys.readouterr().out
    assert "benchmark skipped" in printed and "--style nodules --jobs" in printed
    assert train_bundled.main([*base, "--heldout-cases", "3"]) == 0
    assert runs[0][0] == sys.executable and runs[0][runs[0].index("--cases") + 1] == "3"
    with pytest.raises(SystemExit):
        train_bundled.parse_args(["--work", "w", "--heldout-cases", "-1"])
