"""Does ``--memory-gib`` bound the memory of ``predict``? Peak RSS per budget, side by side in one run.

A 2 x 400 x 400 x 300 float32 scan (zero outside a centred ellipsoid, as a skull-stripped scan)
and a small AFN1 (trunk widths 4) are written to a temporary folder; then ``python -m
src_training predict`` runs once per budget (0.25, 1 and 2 GiB), with and without ``--attention``,
each as its own process under ``/usr/bin/time -v`` (its peak resident memory is its own). The
target: peak <= budget + 1 GiB, the 1 GiB being the interpreter, torch and the loaded scan.

    python benchmarks/memory.py               # about 10 minutes on a 2-core CPU
    python benchmarks/memory.py --quick       # a 2 x 200 x 200 x 150 scan, a minute or two
    python benchmarks/memory.py --json
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
BUDGETS = (0.25, 1.0, 2.0)
SHAPES = {"full": (400, 400, 300), "quick": (200, 200, 150)}


def make_inputs(folder: Path, shape) -> tuple[Path, Path]:
    """The scan (4D NIfTI, channels last) and the model file."""
    import nibabel as nib
    import torch

    from napari_autofocus.nets import build_network, save_model

    rng = np.random.default_rng(0)
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    inside = (x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2) < 0.85
    scan = folder / "scan.nii.gz"
    data = np.zeros((*shape, 2), np.float32)
    for c in range(2):
        channel = rng.normal(100 + 20 * c, 15, size=shape).astype(np.float32)
        channel[~inside] = 0
        data[..., c] = channel
        del channel
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(scan))
    del data
    torch.manual_seed(0)
    model = folder / "afn1.safetensors"
    save_model(build_network("AFN1", 2, 3, channels=(4,) * 8), model, modalities=["T1", "T2"])
    return scan, model


def measure(scan: Path, model: Path, out: Path, budget: float, attention: bool) -> dict:
    """One predict run as its own process: seconds and peak RSS (GiB) from /usr/bin/time -v."""
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "src_training", "predict", "--model", str(model),
           "--input", str(scan), "--out", str(out), "--memory-gib", str(budget),
           "--device", "cpu"]  # fmt: skip
    if attention:
        cmd.append("--attention")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"predict failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    peak = kib / 2**20
    return {
        "budget_gib": budget,
        "attention": attention,
        "seconds": round(seconds, 1),
        "peak_gib": round(peak, 3),
        "target_gib": budget + 1.0,
        "within": peak <= budget + 1.0,
        "files": len(list(out.glob("*.nii.gz"))),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a 2 x 200 x 200 x 150 scan")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs /usr/bin/time (Debian package 'time')")
    shape = SHAPES["quick" if args.quick else "full"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="napari-autofocus-memory-") as tmp:
        folder = Path(tmp)
        scan, model = make_inputs(folder, shape)
        input_gib = 2 * np.prod(shape) * 4 / 2**30
        for attention in (False, True):
            for budget in BUDGETS:
                out = folder / f"out-{budget}-{attention}"
                rows.append(measure(scan, model, out, budget, attention))
                if not args.json:
                    r = rows[-1]
                    print(
                        f"budget {budget:5.2f} GiB  attention {'yes' if attention else 'no ':3s}  "
                        f"peak {r['peak_gib']:5.2f} GiB  (target <= {r['target_gib']:.2f})  "
                        f"{'ok' if r['within'] else 'OVER'}  {r['seconds']:6.1f} s  {r['files']} files",
                        flush=True,
                    )
    report = {"shape": [2, *shape], "input_gib": round(float(input_gib), 3), "runs": rows}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"scan 2 x {' x '.join(map(str, shape))} float32 ({input_gib:.2f} GiB), AFN1 widths 4, CPU")
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
