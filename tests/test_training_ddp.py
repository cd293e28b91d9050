"""Two-process DDP training on CPU (gloo) through the real launcher, ``torchrun``."""

import json
import os
import subprocess
import sys

import pytest
import torch

from src_training.phantom import PhantomConfig, write_dataset

TINY = PhantomConfig(
    shape=(40, 40, 40), small_radius=(2, 3), large_radius=(5, 7), n_small=(2, 2), n_large=(1, 1)
)


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
