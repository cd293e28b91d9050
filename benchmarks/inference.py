"""Inference benchmark: the authors' own procedure against our engine, side by side in one run.

Volume: 4 channels, zero outside a centred ellipsoid "brain" (BraTS size 240x240x155 with semi-axes
70, 87, 70 voxels; ``--quick``: 96x96x64 with the axes scaled alike), smooth z-scored structures
inside. Same weights for every run (the authors' golden AFN6 checkpoint when ``../shared`` has it,
else seeded random ones). Each run is its own process, so its peak memory is its own:

- **reference**: the authors' ``segment()`` as ``predict_volume(mode="reference")`` reproduces it:
  bounding box of the brain, ceil((max - min) / 47) tiles of 75^3 -> 47^3 per axis from its corner
  (36 for the BraTS-size volume), zero padding, one row of tiles per batch, NCDHW;
- **engine**: ``predict_volume`` with the defaults the CLI and the plugin use (exact ``whole`` mode,
  cropped to the foreground, in each slab of each layer only what the foreground's planes need,
  float32, channels-last, 2 GiB budget), with attention as the plugin asks;
- **engine, whole box**: the same computing the whole bounding box (``regions=False``): the
  previous default, the reference for "labels identical";
- **engine, bf16**: the defaults with ``precision="bf16"`` (needs native bf16: AMX or a GPU);
- **engine, no crop**: the same over the whole volume (``crop=False``);
- **engine, 1 GiB**: the defaults with half the memory budget (more activations go to a file);
- **BASIC**, **BASIC, bf16**: the engine's defaults with a BASIC network (no autofocus layer).

Every run captures attention. Printed per run: wall time, peak RSS, GFLOP computed (every
convolution's multiply-adds x 2: what streamed runs counted, else counted on the meta device),
the fraction of one pass over the box that was skipped, GFLOP/s, the fraction of a
convolution peak measured in the same run (a 50->50 3^3 conv on 60^3, channels-last), and the
**seam score** of every autofocus layer's expected rate: mean change across the planes where the
authors' tiles meet, over the median change across all other planes (1.0 = no seams; see
``napari_autofocus.analysis.attention_maths.seam_score``), and, against "engine, whole box", the
share of the voxels both computed whose label agrees, and the largest attention difference.

    python benchmarks/inference.py --quick      # a few minutes on a 2-core CPU
    python benchmarks/inference.py              # BraTS size: about 15 minutes on a 2-core CPU
    python benchmarks/inference.py --json       # one JSON object
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO.parent / "shared" / "reference" / "golden"
SIZES = {"quick": ((96, 96, 64), (28, 35, 28)), "brats": ((240, 240, 155), (70, 87, 70))}
RUNS = {
    "reference": ("AFN6", {"mode": "reference", "channels_last": False}),
    "engine": ("AFN6", {}),
    "engine, whole box": ("AFN6", {"regions": False}),
    "engine, bf16": ("AFN6", {"precision": "bf16"}),
    "engine, no crop": ("AFN6", {"crop": False}),
    "engine, 1 GiB": ("AFN6", {"memory_budget_gib": 1.0}),
    "BASIC": ("BASIC", {}),
    "BASIC, bf16": ("BASIC", {"precision": "bf16"}),
}
FP32_BOX = {"AFN6": "engine, whole box", "BASIC": "BASIC"}  # what each run's labels are compared with


def build_model(arch: str, model_path: str | None = None):
    """A model with non-trivial weights: a given file, the reference's golden checkpoint, or seeded random."""
    from napari_autofocus.nets import build_network, load_model

    if model_path:
        return load_model(model_path)[0]
    golden = GOLDEN / f"{arch}_390_checkpoint.pth.tar"
    if golden.exists():
        return load_model(golden)[0]
    torch.manual_seed(0)
    model = build_network(arch, 4, 5)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval()


def make_volume(shape, semi_axes, channels: int = 4, seed: int = 0) -> np.ndarray:
    """Smooth z-scored structures inside a centred ellipsoid, exactly 0 outside (a skull-stripped scan)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij", sparse=True)
    inside = sum((g / a) ** 2 for g, a in zip(grids, semi_axes, strict=True)) <= 1
    volume = np.zeros((channels, *shape), np.float32)
    for c in range(channels):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 8 + 0.3 * rng.standard_normal(shape)
        field = (field - field[inside].mean()) / field[inside].std()
        volume[c] = np.where(inside, field, 0.0)
    return volume


def count_flops(model, input_shape) -> float:
    """Multiply-adds x 2 of every convolution in one forward pass of ``input_shape`` (N, C, D, H, W),
    counted on the meta device (shapes only, nothing computed)."""
    from napari_autofocus.nets import AutofocusConv

    total = 0.0

    def conv_hook(module, inputs, output):
        nonlocal total
        k = np.prod(module.weight.shape[2:])
        total += 2.0 * module.in_channels * module.out_channels / module.groups * k * output[0, 0].numel()

    def af_hook(module, inputs, output):
        nonlocal total
        k = np.prod(module.weight.shape[2:])
        total += 2.0 * module.K * module.in_channels * module.out_channels * k * output[0, 0].numel()

    meta = copy.deepcopy(model).to("meta")
    for m in meta.modules():
        if isinstance(m, AutofocusConv):
            m.register_forward_hook(af_hook)
        elif isinstance(m, torch.nn.Conv3d):
            m.register_forward_hook(conv_hook)
    with torch.inference_mode():
        meta(torch.zeros(input_shape, device="meta"))
    return total


def conv_peak_gflops() -> float:
    """Achieved GFLOP/s of one 50->50 3^3 conv on 60^3 in channels-last: the machine's practical peak."""
    conv = torch.nn.Conv3d(50, 50, 3, bias=False).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 50, 60, 60, 60).contiguous(memory_format=torch.channels_last_3d)
    flops = 2 * 50 * 50 * 27 * 58**3
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(3):
            t = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def computed_flops(model, prediction) -> tuple[float, float]:
    """(what the run computed, one pass over its cropped volume): streamed runs count what they
    ran; otherwise one pass, or every tile it ran."""
    shape = (1, model.in_channels, *prediction.tile_size)
    one_pass = count_flops(model, shape)
    if prediction.flops is not None:
        return prediction.flops, one_pass
    return one_pass * (1 if prediction.mode == "whole" else prediction.tiles_run), one_pass


def brain_box(volume: np.ndarray) -> tuple[slice, slice, slice]:
    """The bounding box of the voxels non-zero in any channel (the authors' brain mask)."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(4) if a != axis + 1)
        hit = np.flatnonzero(np.any(volume != 0, axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def seam_scores(prediction, volume: np.ndarray) -> dict[str, float]:
    """Seam score of every autofocus layer inside the brain box, at the planes where the authors'
    47^3 output tiles meet (from the box corner, ceil((max - min) / 47) tiles per axis)."""
    from napari_autofocus.analysis.attention_maths import expected_rate, seam_score

    box = brain_box(volume)
    borders = [list(range(47, s.stop - s.start, 47)) for s in box]
    return {
        name: round(seam_score(expected_rate(a[(slice(None), *box)], prediction.rates[name]), borders), 3)
        for name, a in prediction.attention.items()
    }


def peak_rss_gib() -> float:
    """This process's peak resident memory since it started. ``VmHWM`` belongs to the process's own
    address space; ``ru_maxrss`` is carried over from the parent at fork (Linux), so a parent
    holding earlier runs' outputs would inflate it."""
    try:
        with open("/proc/self/status") as f:
            line = next(x for x in f if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 2**20
    except (OSError, StopIteration):
        return (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            / 2**20
            * (1 / 1024 if sys.platform == "darwin" else 1)
        )


def worker(args) -> None:
    """One run in this process; writes its numbers and labels next to ``args.result``."""
    from napari_autofocus.inference import predict_volume

    torch.set_num_threads(args.threads or torch.get_num_threads())
    arch, options = RUNS[args.worker]
    model = build_model(arch, args.model if arch == "AFN6" else None)
    volume = make_volume(*SIZES[args.size_name], model.in_channels)
    start = time.perf_counter()
    prediction = predict_volume(model, volume, device=args.device, attention=True, **options)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else peak_rss_gib()
    seams = seam_scores(prediction, volume)
    np.save(args.result + ".npy", prediction.labels)
    np.save(args.result + ".computed.npy", prediction.computed)
    attention = {n: a for n, a in prediction.attention.items()}
    np.savez(args.result + ".attention.npz", **attention)
    flops, one_pass = computed_flops(model, prediction)
    record = {
        "arch": arch,
        "seconds": seconds,
        "peak_gib": peak,
        "gflop": flops / 1e9,
        "skipped": 1 - flops / one_pass if prediction.mode == "whole" else None,
        "mode": prediction.mode,
        "tiles": prediction.tiles_run,
        "input": list(prediction.tile_size),
        "crop_box": prediction.crop_box,
        "seam_score": seams,
    }
    Path(args.result + ".json").write_text(json.dumps(record))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="AFN6 model file (default: the authors' golden AFN6 weights or random)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="brats", dest="size_name")
    parser.add_argument("--quick", action="store_const", const="quick", dest="size_name", help="small volume")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS), help="which runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", choices=list(RUNS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(args.runs):
            out = os.path.join(tmp, str(i))
            cmd = [sys.executable, __file__, "--worker", run, "--result", out, "--size", args.size_name]
            cmd += ["--device", args.device, "--threads", str(args.threads)]
            if args.model:
                cmd += ["--model", args.model]
            if not args.json:
                print(f"running {run} ...", flush=True)
            subprocess.run(cmd, check=True)
            results[run] = json.loads(Path(out + ".json").read_text())
            results[run]["labels"] = np.load(out + ".npy")
            results[run]["computed"] = np.load(out + ".computed.npy")
            results[run]["attention"] = dict(np.load(out + ".attention.npz"))
    peak = conv_peak_gflops() if args.device == "cpu" else float("nan")
    shape, axes = SIZES[args.size_name]
    baseline = results.get("reference")
    summary = {"volume": [4, *shape], "brain_semi_axes": list(axes), "device": args.device}
    summary["conv_peak_gflops_per_s"] = round(peak, 1)
    rows = {}
    for run, r in results.items():
        rows[run] = {
            "arch": r["arch"],
            "mode": r["mode"],
            "seconds": round(r["seconds"], 1),
            "speedup_vs_reference": round(baseline["seconds"] / r["seconds"], 2) if baseline else None,
            "peak_rss_gib": round(r["peak_gib"], 2),
            "gflop": round(r["gflop"], 0),
            "gflops_per_s": round(r["gflop"] / r["seconds"], 1),
            "fraction_of_conv_peak": round(r["gflop"] / r["seconds"] / peak, 2) if peak == peak else None,
            "tiles": r["tiles"],
            "input": r["input"],
            "seam_score": r["seam_score"],
            "skipped_of_box": round(r["skipped"], 3) if r["skipped"] is not None else None,
            "labels_same_as_reference": (
                round(float((r["labels"] == baseline["labels"]).mean()), 4) if baseline else None
            ),
            **against_fp32_box(r, results.get(FP32_BOX[r["arch"]])),
        }
    summary["runs"] = rows
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"\nAFN6/BASIC on a {'x'.join(map(str, summary['volume']))} volume, "
        f"brain semi-axes {axes}, {args.device}"
    )
    print(f"convolution peak measured here: {peak:.0f} GFLOP/s\n")
    head = f"{'run':18s} {'time s':>7s} {'speedup':>8s} {'RSS GiB':>8s} {'GFLOP':>7s} {'skipped':>8s}"
    head += f" {'GFLOP/s':>8s} {'of peak':>8s} {'labels=':>8s} {'max |da|':>8s}"
    print(head + "  seam score per autofocus layer")
    for run, r in rows.items():
        seams = " ".join(f"{k} {v:.2f}" for k, v in r["seam_score"].items()) or "-"
        speed = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] else "-"
        fraction = f"{r['fraction_of_conv_peak']:.2f}" if r["fraction_of_conv_peak"] is not None else "-"
        skipped = f"{r['skipped_of_box']:.3f}" if r["skipped_of_box"] is not None else "-"
        same = f"{r['labels_same_as_fp32_box']:.5f}" if r["labels_same_as_fp32_box"] is not None else "-"
        diff = f"{r['attention_max_diff']:.4f}" if r["attention_max_diff"] is not None else "-"
        print(
            f"{run:18s} {r['seconds']:7.1f} {speed:>8s} {r['peak_rss_gib']:8.2f} {r['gflop']:7.0f} "
            f"{skipped:>8s} {r['gflops_per_s']:8.1f} {fraction:>8s} {same:>8s} {diff:>8s}  {seams}"
        )
    print("\nlabels=: share of the voxels both computed whose label equals the fp32 whole-box run's;")
    print("max |da|: the largest attention weight difference there")
    return 0


def against_fp32_box(run: dict, fp32_box: dict | None) -> dict:
    """Labels and attention of a run against the fp32 whole-box run, on the voxels both computed."""
    if fp32_box is None or run is fp32_box:
        return {"labels_same_as_fp32_box": None, "attention_max_diff": None}
    both = run["computed"] & fp32_box["computed"]
    same = float((run["labels"][both] == fp32_box["labels"][both]).mean())
    diffs = [
        float(np.nanmax(np.abs(a[:, both].astype(np.float32) - fp32_box["attention"][n][:, both])))
        for n, a in run["attention"].items()
    ]
    return {"labels_same_as_fp32_box": round(same, 6), "attention_max_diff": max(diffs, default=None)}


if __name__ == "__main__":
    sys.exit(main())
