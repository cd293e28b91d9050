"""``summary``: parameters, receptive field, margin and output size of each architecture.

Answers "how big is this network and how much context does it see" without reading the paper,
and reproduces Table 3's parameter counts as a check of the implementation.
"""

from __future__ import annotations

import argparse
import json

from napari_autofocus.errors import AutofocusError

COLUMNS = [
    ("arch", "arch"),
    ("parameters", "parameters"),
    ("rf_min", "RF min"),
    ("rf_max", "RF max"),
    ("margin", "margin/side"),
    ("output", "output"),
    ("autofocus_layers", "AF layers"),
]


def register(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--arch", action="append", help="architecture (repeatable); default: all")
    parser.add_argument("--in-channels", type=int, default=4, help="input channels (default 4)")
    parser.add_argument("--classes", type=int, default=5, help="number of classes (default 5)")
    parser.add_argument("--patch", type=int, default=75, help="input patch edge in voxels (default 75)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)
    return parser


def summarize(arch: str, in_channels: int, num_classes: int, patch: int) -> dict:
    """One row: the numbers a user needs to pick an architecture and a patch size."""
    from napari_autofocus.nets import build_network

    net = build_network(arch, in_channels, num_classes)
    try:
        output = net.output_size(patch)
    except AutofocusError:
        output = None
    return {
        "arch": net.arch,
        "parameters": sum(p.numel() for p in net.parameters()),
        "rf_min": net.receptive_field_min,
        "rf_max": net.receptive_field,
        "margin": net.margin,
        "patch": patch,
        "output": output,
        "autofocus_layers": len(net.autofocus_geometry()),
        "input_multiple": net.input_multiple,
    }


def format_table(rows: list[dict]) -> str:
    cells = [[title for _, title in COLUMNS]]
    for row in rows:
        line = []
        for key, _ in COLUMNS:
            value = row[key]
            line.append("-" if value is None else f"{value:,}" if key == "parameters" else str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from napari_autofocus.nets import ARCHITECTURES

    archs = args.arch or list(ARCHITECTURES)
    rows = [summarize(a, args.in_channels, args.classes, args.patch) for a in archs]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
        print(
            f"\noutput = output edge for a {args.patch}^3 patch ('-': unusable size); RF in voxels per axis."
        )
    return 0
