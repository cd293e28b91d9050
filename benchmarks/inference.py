"""Inference benchmark: the reference's way of running a network vs our engine, side by side.

Same weights, same volume, one run each, each in its own process (so peak memory is its own):

- **baseline**: what the reference does: pad by the margin, cut non-overlapping 47^3 output tiles
  from 75^3 input tiles, default (NCDHW) memory layout, ``torch.no_grad``, per-branch convolution
  and batch norm (the paper's formulation, as our AutofocusConv computes it), argmax of logits;
- **engine**: ``napari_autofocus.inference.predict_volume`` with its defaults (channels-last-3d,
  ``inference_mode``, tiles as large as the memory budget allows, split evenly).

Prints wall time of each, the speedup, peak memory (max RSS of each process on CPU, max allocated
on CUDA), achieved GFLOP/s against a convolution peak measured here (a 50->50 3^3 conv on 60^3,
channels-last), and how many voxels get the same label (autofocus layers zero-pad large dilations
per tile, so different tilings disagree a little at tile borders).

    python benchmarks/inference.py --quick            # about two minutes on a 2-core CPU
    python benchmarks/inference.py --size brats       # 4 x 240 x 240 x 155 (tens of minutes on a CPU)
    python benchmarks/inference.py --quick --json     # one JSON object
"""

from __future__ import annotations

import argparse
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
SIZES = {"quick": (94, 94, 94), "brats": (240, 240, 155)}


def build_model(arch: str, model_path: str | None):
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


def make_volume(shape, channels: int, seed: int = 0) -> np.ndarray:
    """A z-scored, brain-like synthetic volume: smooth structures inside an ellipsoid, 0 outside."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grids) < 0.9
    volume = np.zeros((channels, *shape), np.float32)
    for c in range(channels):
        field = ndimage.gaussian_filter(rng.standard_normal(shape), 3) * 8 + 0.3 * rng.standard_normal(shape)
        field = (field - field[inside].mean()) / field[inside].std()
        volume[c] = np.where(inside, field, 0.0)
    return volume


def count_flops(model, input_shape) -> float:
    """Multiply-adds x 2 of every convolution for one forward pass of ``input_shape`` (N, C, D, H, W)."""
    from napari_autofocus.nets import AutofocusConv

    total = 0.0
    hooks = []

    def conv_hook(module, inputs, output):
        nonlocal total
        k = np.prod(module.weight.shape[2:])
        total += 2.0 * module.in_channels * module.out_channels / module.groups * k * output[0, 0].numel()

    def af_hook(module, inputs, output):
        nonlocal total
        k = np.prod(module.weight.shape[2:])
        total += 2.0 * module.K * module.in_channels * module.out_channels * k * output[0, 0].numel()

    for m in model.modules():
        if isinstance(m, AutofocusConv):
            hooks.append(m.register_forward_hook(af_hook))
        elif isinstance(m, torch.nn.Conv3d):
            hooks.append(m.register_forward_hook(conv_hook))
    with torch.inference_mode():
        model(torch.zeros(input_shape))
    for h in hooks:
        h.remove()
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


def run_baseline(model, volume: np.ndarray) -> tuple[np.ndarray, float]:
    """The reference's tiling: 75^3 in, 47^3 out, stride 47, NCDHW, no_grad. Returns labels and FLOPs."""
    margin, out = model.margin, 47
    shape = volume.shape[1:]
    n_tiles = [int(np.ceil(n / out)) for n in shape]
    padded_shape = [t * out + 2 * margin for t in n_tiles]
    padded = np.zeros((volume.shape[0], *padded_shape), np.float32)
    padded[(slice(None), *(slice(margin, margin + n) for n in shape))] = volume
    logits = np.zeros((model.num_classes, *(t * out for t in n_tiles)), np.float32)
    model = model.eval().to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        for i in range(n_tiles[0]):
            for j in range(n_tiles[1]):
                for k in range(n_tiles[2]):
                    s = (i * out, j * out, k * out)
                    tile = padded[
                        :,
                        s[0] : s[0] + out + 2 * margin,
                        s[1] : s[1] + out + 2 * margin,
                        s[2] : s[2] + out + 2 * margin,
                    ]
                    y = model(torch.from_numpy(np.ascontiguousarray(tile))[None])[0].numpy()
                    logits[:, s[0] : s[0] + out, s[1] : s[1] + out, s[2] : s[2] + out] = y
    flops = count_flops(model, (1, volume.shape[0], out + 2 * margin, out + 2 * margin, out + 2 * margin))
    labels = logits.argmax(0)[tuple(slice(0, n) for n in shape)].astype(np.uint8)
    return labels, flops * np.prod(n_tiles)


def run_engine(model, volume: np.ndarray, device: str) -> tuple[np.ndarray, float, tuple]:
    from napari_autofocus.inference import make_plan, predict_volume

    prediction = predict_volume(model, volume, device=device)
    plan = make_plan(model, volume.shape[1:])
    flops = count_flops(model, (1, volume.shape[0], *plan.input_tile_size)) * len(plan.tiles)
    return prediction.labels, flops, plan.input_tile_size


def worker(args) -> None:
    """One variant in this process; writes its labels and numbers to args.result."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = build_model(args.arch, args.model)
    volume = make_volume(SIZES[args.size_name], model.in_channels)
    device = "cuda" if args.device == "cuda" else "cpu"
    if device == "cuda":
        model = model.cuda()
    start = time.perf_counter()
    if args.worker == "baseline":
        labels, flops = run_baseline(model, volume)
        tile = (75, 75, 75)
    else:
        labels, flops, tile = run_engine(model, volume, device)
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    np.save(args.result + ".npy", labels)
    Path(args.result + ".json").write_text(
        json.dumps({"seconds": seconds, "peak_gib": peak, "gflop": flops / 1e9, "tile": list(tile)})
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="AFN6")
    parser.add_argument("--model", help="model file (default: the reference's golden AFN6 weights or random)")
    parser.add_argument("--size", choices=sorted(SIZES), default="quick", dest="size_name")
    parser.add_argument("--quick", action="store_const", const="quick", dest="size_name")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--worker", choices=["baseline", "engine"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ("baseline", "engine"):
            out = os.path.join(tmp, variant)
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--result",
                out,
                "--arch",
                args.arch,
                "--size",
                args.size_name,
                "--device",
                args.device,
                "--threads",
                str(args.threads),
            ]
            if args.model:
                cmd += ["--model", args.model]
            if not args.json:
                print(f"running {variant} ...", flush=True)
            subprocess.run(cmd, check=True)
            results[variant] = json.loads(Path(out + ".json").read_text())
            results[variant]["labels"] = np.load(out + ".npy")
    peak = conv_peak_gflops() if args.device == "cpu" else float("nan")
    base, eng = results["baseline"], results["engine"]
    agreement = float((base["labels"] == eng["labels"]).mean())
    summary = {
        "arch": args.arch,
        "volume": [4, *SIZES[args.size_name]],
        "device": args.device,
        "baseline_s": round(base["seconds"], 2),
        "engine_s": round(eng["seconds"], 2),
        "speedup": round(base["seconds"] / eng["seconds"], 2),
        "baseline_peak_gib": round(base["peak_gib"], 3),
        "engine_peak_gib": round(eng["peak_gib"], 3),
        "engine_tile": eng["tile"],
        "baseline_gflop": round(base["gflop"], 1),
        "engine_gflop": round(eng["gflop"], 1),
        "baseline_gflops_per_s": round(base["gflop"] / base["seconds"], 1),
        "engine_gflops_per_s": round(eng["gflop"] / eng["seconds"], 1),
        "conv_peak_gflops_per_s": round(peak, 1),
        "label_agreement": round(agreement, 5),
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.arch} on a {'x'.join(map(str, summary['volume']))} volume, {args.device}")
    print(f"{'':10s} {'time s':>8s} {'peak GiB':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s}  tiles")
    print(
        f"{'baseline':10s} {summary['baseline_s']:8.1f} {summary['baseline_peak_gib']:9.2f} "
        f"{summary['baseline_gflop']:8.0f} {summary['baseline_gflops_per_s']:8.1f}  75^3 in / 47^3 out, NCDHW"
    )
    print(
        f"{'engine':10s} {summary['engine_s']:8.1f} {summary['engine_peak_gib']:9.2f} "
        f"{summary['engine_gflop']:8.0f} {summary['engine_gflops_per_s']:8.1f}  "
        f"{eng['tile']} in, channels-last"
    )
    print(
        f"speedup {summary['speedup']:.2f}x; "
        f"convolution peak here {summary['conv_peak_gflops_per_s']:.0f} GFLOP/s; "
        f"label agreement {100 * agreement:.3f} %"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
