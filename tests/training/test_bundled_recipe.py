"""The recipe of the bundled models: the driver's commands are the ones sample_data/README.md documents."""

from __future__ import annotations

import importlib.util
import shlex

from repo_paths import REPO

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


def test_resume_continues_earlier_runs_and_never_overwrites_them(tmp_path, monkeypatch):
    import pytest

    started = {}
    monkeypatch.setattr(train_bundled, "run_all", lambda commands, work, logs: started.update(commands) or {})
    (tmp_path / "data" / "phantom_train").mkdir(parents=True)
    (tmp_path / "data" / "phantom_train" / "dataset.json").write_text(
        '{"numTraining": 40, "phantom": {"config": {"style": "clusters"}}}'
    )
    base = ["--work", str(tmp_path), "--archs", "AFN6", "BASIC", "--epochs", "2", "--heldout-cases", "0"]
    assert train_bundled.main(base) == 0
    assert all("--resume" not in command for command in started.values())  # nothing there yet: fresh runs

    (tmp_path / "runs" / "AFN6").mkdir(parents=True)
    (tmp_path / "runs" / "AFN6" / "checkpoint_latest.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="already holds a run; add --resume"):
        train_bundled.main(base)
    started.clear()
    assert train_bundled.main([*base, "--resume"]) == 0
    assert "--resume" in started["AFN6"] and "--resume" not in started["BASIC"]

    (tmp_path / "runs" / "BASIC").mkdir()
    (tmp_path / "runs" / "BASIC" / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="no checkpoint_latest.pt"):
        train_bundled.main([*base, "--resume"])
    with pytest.raises(SystemExit):  # the epoch count must be the runs' own, not a new time estimate
        train_bundled.parse_args(["--work", "w", "--fit-seconds", "300", "--resume"])


def test_stopping_the_driver_stops_every_run(tmp_path, monkeypatch):
    import subprocess
    import sys

    import pytest

    procs = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        procs.append(real_popen(*args, **kwargs))
        return procs[-1]

    real_sleep, interrupted = train_bundled.time.sleep, []

    def interrupt(seconds):  # the driver's first wait is cut short, as Ctrl-C (or SIGTERM) would
        if not interrupted:
            interrupted.append(seconds)
            raise KeyboardInterrupt
        real_sleep(seconds)

    monkeypatch.setattr(subprocess, "Popen", popen)
    monkeypatch.setattr(train_bundled.time, "sleep", interrupt)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    with pytest.raises(KeyboardInterrupt):
        train_bundled.run_all({"A": sleeper, "B": sleeper}, tmp_path, tmp_path / "logs")
    assert len(procs) == 2 and all(proc.poll() is not None for proc in procs)


def test_sigterm_to_the_driver_stops_its_runs(tmp_path):
    """``timeout -s TERM`` (a lease's time limit) must not leave trainings running without their driver."""
    import os
    import signal
    import subprocess
    import sys
    import time

    child = "import os, time; open('child.pid', 'w').write(str(os.getpid())); time.sleep(120)"
    driver = (
        "import importlib.util, sys; from pathlib import Path\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(SPEC.origin)!r})\n"
        "d = importlib.util.module_from_spec(spec); spec.loader.exec_module(d)\n"
        f"d.run_all({{'A': [sys.executable, '-c', {child!r}]}}, Path('.'), Path('logs'))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=tmp_path)
    pid_file = tmp_path / "child.pid"
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    try:
        os.kill(child_pid, 0)
    except ProcessLookupError:
        pass  # gone, and reaped by the driver
    else:
        raise AssertionError(f"the run (pid {child_pid}) outlived its driver")


def test_the_brain_recipe_generates_brain_cases_trains_on_them_and_scores_by_region():
    args = train_bundled.parse_args(
        ["--work", "w", "--dataset", "brain", "--channels", "12,12,16,16,16,16,20,20", "--epochs", "20"]
    )
    data = train_bundled.data_command(args)
    assert data[2:5] == ["src_training", "brain-phantom", "--out"] and "data/brain_train" in data
    command = train_bundled.train_command(args, "AFN6", "runs/AFN6", 20, 25, 5)
    assert command[command.index("--data") + 1] == "data/brain_train"
    assert command[command.index("--channels") + 1] == "12,12,16,16,16,16,20,20"
    benchmark = train_bundled.benchmark_command(args)
    assert benchmark[1].endswith("brain_table.py") and "--style" not in benchmark
