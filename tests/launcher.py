"""Run ``python -m src_training`` under the real launcher, ``torchrun``, with CPU processes."""

import os
import subprocess
import sys

from repo_paths import REPO


def torchrun(args: list[str], processes: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """The finished launcher run (one CPU thread per process, so the processes do not fight)."""
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
    ]
    command = [*launcher, "-m", "src_training", *[str(a) for a in args]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done
