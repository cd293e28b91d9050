"""Training-step cost per memory layout: why ``train --channels-last auto`` turns the layout on for CPU.

Times one optimisation step (forward, cross-entropy + Dice loss, backward, Adam) of a network on a
batch of patches, NCDHW and channels-last-3d side by side in one process, interleaved, min over
repeats, and prints seconds per step, seconds per patch and the ratio. On CPU oneDNN picks much
faster kernels for the dilated 3^3 convolutions in the channels-last layout.

    python benchmarks/train_step.py                    # AFN6, 2 patches of 57^3 (2 min on 2 cores)
    python benchmarks/train_step.py --arch BASIC --patch 75 --batch 1
    python benchmarks/train_step.py --channels 8,8,10,10,10,10,12,12 --batch 4 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from napari_autofocus.nets import build_network
from src_training.losses import SegmentationLoss

LAYOUTS = {"NCDHW": torch.contiguous_format, "channels-last-3d": torch.channels_last_3d}


def make_step(arch: str, channels, batch: int, patch: int, layout, seed: int = 0):
    """A closure running one training step of a fresh, identically seeded network in ``layout``."""
    torch.manual_seed(seed)
    options = {"channels": channels} if channels else {}
    net = build_network(arch, 4, 3, **options).to(memory_format=layout).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    criterion = SegmentationLoss("ce+dice", False)
    out = net.output_size(patch)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, patch, patch, patch, generator=generator).contiguous(memory_format=layout)
    y = torch.randint(0, 3, (batch, out, out, out), generator=generator)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(net(x), y)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="AFN6")
    parser.add_argument("--channels", help="8 trunk widths (default: the paper's)")
    parser.add_argument("--patch", type=int, default=57, help="input patch edge")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    channels = [int(c) for c in args.channels.split(",")] if args.channels else None

    steps = {
        name: make_step(args.arch, channels, args.batch, args.patch, fmt) for name, fmt in LAYOUTS.items()
    }
    best = {name: float("inf") for name in steps}
    for step in steps.values():
        step()  # warm-up: oneDNN primitive creation, allocator
    for _ in range(args.repeats):  # interleaved, so machine noise hits both layouts alike
        for name, step in steps.items():
            best[name] = min(best[name], step())
    report = {
        "arch": args.arch,
        "channels": channels,
        "patch": args.patch,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "seconds_per_step": best,
        "speedup_channels_last": best["NCDHW"] / best["channels-last-3d"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.arch}, {args.batch} x {args.patch}^3, {report['threads']} threads, min of {args.repeats}")
    for name, seconds in best.items():
        print(f"  {name:17s} {seconds:7.2f} s/step  {seconds / args.batch:6.2f} s/patch")
    print(f"  channels-last-3d is {report['speedup_channels_last']:.2f}x faster per step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
