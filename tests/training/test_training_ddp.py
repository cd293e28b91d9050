"""Two-process DDP training on CPU (gloo) through the real launcher, ``torchrun``."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from phantom_configs import PHANTOM_40

from src_training.phantom_cases import write_dataset

TINY = PHANTOM_40


@pytest.mark.slow
def test_torchrun_two_processes_keep_parameters_identical(tmp_path):
    ds = write_dataset(tmp_path / "ds", 3, 0, TINY, layout="nnunet")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "src_training", "train", "--data", str(ds), "--out", str(out),
           "--cache", str(tmp_path / "cache"),
           "--arch", "BASIC", "--channels", "4,4,4,4,4,4,4,4", "--patch-size", "33", "--batch-size", "4",
           "--epochs", "1", "--iters-per-epoch", "3", "--val-cases", "1", "--device", "cpu", "--workers", "0",
           "--debug-checksums", "--seed", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = (out / "param_checksum_rank0.txt").read_text().strip()
    rank1 = (out / "param_checksum_rank1.txt").read_text().strip()
    # Each rank drew different patches (seed + rank*1000): only gradient all-reduce keeps them equal.
    assert len(rank0) == 64 and rank0 == rank1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["iteration"] == 3 and "val_dice" in log[0]
    final = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in final["model"])  # saved unwrapped
    assert final["sampler"]["world_size"] == 2
    assert proc.stdout.count("done:") == 1  # only rank 0 reports
    assert "Grad strides do not match bucket view strides" not in proc.stderr  # CPU DDP: default layout


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _launch(tmp_path, *extra):
    ds = write_dataset(tmp_path / "ds", 3, 0, TINY, layout="nnunet")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "src_training", "train", "--data", str(ds), "--out", str(out),
           "--cache", str(tmp_path / "cache"), "--arch", "BASIC", "--channels", "4,4,4,4,4,4,4,4",
           "--patch-size", "33", "--batch-size", "2", "--epochs", "500", "--iters-per-epoch", "2",
           "--val-every", "0", "--val-cases", "1", "--device", "cpu", "--workers", "0", *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "torchrun.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
    deadline = time.monotonic() + 180
    while not (out / "checkpoint_latest.pt").exists():  # training is under way
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "torchrun.log").read_text()
        time.sleep(0.5)
    workers = [p for p in _children(proc.pid) if "src_training" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2
    return proc, workers


@pytest.mark.slow
def test_workers_stop_when_the_launcher_is_killed(tmp_path):
    proc, workers = _launch(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        assert not any(_alive(p) for p in workers), "workers trained on as orphans"
    finally:
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.slow
def test_a_stopped_rank_ends_the_run_with_a_message_after_the_timeout(tmp_path):
    proc, workers = _launch(tmp_path, "--ddp-timeout", "0.1")
    rank1 = next(p for p in workers if b"RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes())
    os.kill(rank1, signal.SIGSTOP)
    message = "rank 0: another training process did not answer within --ddp-timeout 0.1 min"
    log_file = tmp_path / "torchrun.log"
    try:
        # once rank 0 has said why it stops, torchrun would wait 30 s (its fixed grace period) for the
        # stopped rank to answer SIGTERM; end that rank as an operator would
        deadline = time.monotonic() + 120
        while message not in log_file.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(rank1, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "torchrun.log").read_text()
    assert proc.returncode != 0
    assert message in log, log[-3000:]
