"""``export``: a model as a bioimage.io package or a MONAI bundle (their validators accept both).

The formats and what they hold are described in :mod:`napari_autofocus.exchange`; this module only
parses the command line and says what was written.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    from napari_autofocus.exchange.formats import FORMATS

    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text + ". Needs the optional tools: pip install 'napari-autofocus[export]'.",
        epilog="formats:\n" + "\n".join(f"  {k}: {v[0]}" for k, v in FORMATS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", type=Path, help="model file (.safetensors, or an authors' .pth.tar checkpoint)"
    )
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="what to write")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the package or bundle into")
    parser.add_argument("--name", help="package name (default: the model file's name)")
    parser.add_argument("--arch", help="architecture of a reference checkpoint (default: detected)")
    parser.add_argument(
        "--sample",
        type=Path,
        help="bioimage.io: a NIfTI scan for the test tensors (default: the bundled sample that fits)",
    )
    parser.add_argument(
        "--sample-labels", type=Path, help="bioimage.io: its labels (the test cube centres on them)"
    )
    parser.add_argument("--force", action="store_true", help="replace a package or bundle this tool exported")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from napari_autofocus.exchange.formats import export_model

    hints = {"arch": args.arch} if args.arch else {}
    options = {"scan": args.sample, "labels": args.sample_labels} if args.sample else {}
    written = export_model(
        args.format, args.model, args.out, name=args.name, force=args.force, **options, **hints
    )
    print(f"wrote {written}")
    if args.format == "bioimageio":
        print(f"check it with: bioimageio test {written}")
    else:
        print(
            f"run it with: python -m monai.bundle run --config_file {written}/configs/inference.json "
            f"--meta_file {written}/configs/metadata.json --bundle_root {written} --dataset_dir SCANS"
        )
    return 0
