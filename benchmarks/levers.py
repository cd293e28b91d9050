"""Which inference levers pay off on this machine: one tile of a network under each setting.

Times one forward pass (min over repeats) and reports time per *output* voxel, so tile sizes are
comparable. Levers: memory layout (NCDHW vs channels-last-3d), ``no_grad`` vs ``inference_mode``,
``torch.compile``, and tile size (a larger tile recomputes less margin per output voxel). bf16
autocast is left out on CPUs without native bf16 (measured 30-70x slower here).

    python benchmarks/levers.py                 # AFN6, 75^3 and 111^3 input tiles
    python benchmarks/levers.py --arch BASIC --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

from napari_autofocus.nets import build_network


def time_forward(model, size: int, channels_last: bool, mode: str, repeats: int) -> float:
    x = torch.randn(1, model.in_channels, size, size, size)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    best = float("inf")
    with context():
        model(x)  # warm-up (and compilation, for compiled models)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", default="AFN6")
    parser.add_argument("--sizes", type=int, nargs="+", default=[75, 111], help="input tile edges")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = build_network(args.arch, 4, 5).eval()
    rows = []
    settings = [
        ("NCDHW, no_grad (reference)", False, "no_grad", False),
        ("NCDHW, inference_mode", False, "inference_mode", False),
        ("channels-last, inference_mode", True, "inference_mode", False),
    ]
    if not args.no_compile:
        settings.append(("channels-last, inference_mode, torch.compile", True, "inference_mode", True))
    for size in args.sizes:
        out = model.output_size(size)
        for name, channels_last, mode, compiled in settings:
            net = model
            if compiled:
                with contextlib.suppress(Exception):
                    net = torch.compile(model)
            seconds = time_forward(net, size, channels_last, mode, args.repeats)
            rows.append(
                {
                    "setting": name,
                    "input": size,
                    "output": out,
                    "seconds": round(seconds, 3),
                    "us_per_output_voxel": round(seconds / out**3 * 1e6, 3),
                }
            )
    base = rows[0]["us_per_output_voxel"]
    for row in rows:
        row["speedup_vs_reference"] = round(base / row["us_per_output_voxel"], 2)
    if args.json:
        print(json.dumps({"arch": args.arch, "threads": torch.get_num_threads(), "rows": rows}))
        return 0
    print(f"{args.arch}, {torch.get_num_threads()} threads; speedup per output voxel vs the first row")
    print(f"{'setting':48s} {'tile':>11s} {'s/tile':>8s} {'us/voxel':>9s} {'speedup':>8s}")
    for r in rows:
        tile = f"{r['input']}->{r['output']}"
        print(
            f"{r['setting']:48s} {tile:>11s} {r['seconds']:8.2f} {r['us_per_output_voxel']:9.2f} "
            f"{r['speedup_vs_reference']:8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
