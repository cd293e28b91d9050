"""Cohort benchmark: one process against several under torchrun, and the I/O overlap, side by side in one run.

A cohort of phantom cases (``--cases``, default 16, 96^3 voxels, 2 channels; made once by
``python -m src_training phantom``) is predicted with attention by a bundled model
(AFN6_phantom), each configuration in its own output folder:

- **1 process, sequential**: read, compute, write one after the other (``--sequential``);
- **1 process**: the default pipeline (the next case is read and the last one written while the
  network runs);
- **N processes** (``--procs``, default 2): ``torchrun --nproc-per-node N``, each rank a shard, with
  the CPU threads split between them (``OMP_NUM_THREADS``).

Printed per run: wall time, cases per minute, the speed-up over the sequential run, and the
network's idle fraction (the share of each process's wall time its computing thread waited for
reading or writing), which is what the pipeline exists to shrink. Every run's label maps are
checked to be identical. On a GPU, pass ``--device cuda`` and ``--procs`` = the number of GPUs.

    python benchmarks/cohort.py                 # about 10 minutes on a 2-core CPU
    python benchmarks/cohort.py --cases 4       # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "napari_autofocus" / "sample_data" / "models" / "AFN6_phantom.safetensors"
BUSY = re.compile(r"busy (\d+)% of the time")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=16)
    p.add_argument("--procs", type=int, default=2, help="processes of the torchrun run (default 2)")
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", help="folder for the cohort and the outputs (default: a temporary one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


def run_config(name: str, command: list[str], env: dict) -> dict:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    busy = [int(m) / 100 for m in BUSY.findall(done.stdout)]
    return {"name": name, "wall_s": wall, "idle_fraction": 1 - float(np.mean(busy)) if busy else None}


def labels_of(folder: Path) -> dict[str, bytes]:
    import nibabel as nib

    return {
        p.name: np.asarray(nib.load(p).dataobj).tobytes() for p in sorted(folder.glob("phantom_?????.nii.gz"))
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="cohort-benchmark-"))
    data = work / "cohort"
    if not data.exists():
        make = [sys.executable, "-m", "src_training", "phantom", "--out", str(data),
                "--cases", str(args.cases), "--seed", "7000"]  # fmt: skip
        subprocess.run(make, cwd=REPO, check=True, capture_output=True)
    threads = os.cpu_count() or 1
    base = ["-m", "src_training", "predict", "--model", args.model, "--input", str(data / "imagesTr"),
            "--attention", "--device", args.device]  # fmt: skip
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(args.procs),
    ]
    configs = [
        ("1 process, sequential", [sys.executable, *base, "--sequential"], threads),
        ("1 process", [sys.executable, *base], threads),
        (f"{args.procs} processes (torchrun)", [*launcher, *base], max(1, threads // args.procs)),
    ]
    results, outputs = [], []
    for i, (name, command, omp) in enumerate(configs):
        out = work / f"out{i}"
        if out.exists():
            raise SystemExit(f"{out} exists: give a fresh --work")
        env = {**os.environ, "OMP_NUM_THREADS": str(omp)}
        results.append(run_config(name, [*command, "--out", str(out)], env))
        outputs.append(labels_of(out))
    same = all(o == outputs[0] for o in outputs) and len(outputs[0]) == args.cases
    base_wall = results[0]["wall_s"]
    for r in results:
        r["cases_per_min"] = args.cases / r["wall_s"] * 60
        r["speedup"] = base_wall / r["wall_s"]
    if args.json:
        print(
            json.dumps({"cases": args.cases, "threads": threads, "labels_identical": same, "runs": results})
        )
        return 0
    print(f"{args.cases} phantom cases (96^3, 2 channels), {Path(args.model).name} with attention, "
          f"{threads} CPU threads, device {args.device}")  # fmt: skip
    print(f"{'run':28s} {'wall s':>8s} {'cases/min':>10s} {'speed-up':>9s} {'idle':>6s}")
    for r in results:
        idle = f"{r['idle_fraction']:.0%}" if r["idle_fraction"] is not None else "n/a"
        print(
            f"{r['name']:28s} {r['wall_s']:8.1f} {r['cases_per_min']:10.2f} {r['speedup']:8.2f}x {idle:>6s}"
        )
    print(f"label maps identical across runs: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
