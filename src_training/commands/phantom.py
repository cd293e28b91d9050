"""``python -m src_training phantom``: write a deterministic phantom dataset (src_training.phantom_cases)."""

from __future__ import annotations

import argparse

from napari_autofocus.errors import DatasetError
from src_training.commands.generated_dataset import add_arguments, checked_output
from src_training.phantom_styles import STYLES


def register(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Write synthetic multi-channel 3D cases whose labels depend on the size or the "
        "surroundings of each structure, not on local intensity. "
        "The same seed always gives the same files.",
        epilog="example: python -m src_training phantom --out data/phantom --cases 20 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument(
        "--size", type=int, nargs="+", help="volume size: N or X Y Z (default 96; 112 for --style nodules)"
    )
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.0, 1.0, 1.0], help="voxel size in mm")
    parser.add_argument(
        "--style",
        choices=STYLES,
        default="clusters",
        help="structure shapes: 'clusters' of lobes (default; size needs context beyond 29^3), 'masses' "
        "(a solid core with budding lobes), single 'blobs' (a blob's curvature gives its size away) or "
        "'nodules' (large lesions are masses with a small nodule on the wall; look-alike masses without "
        "one are background)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:

    from src_training.phantom_cases import PhantomConfig, write_dataset
    from src_training.phantom_styles import default_size, smallest_size

    out = checked_output(args)
    size = args.size or [default_size(args.style)]
    if len(size) not in (1, 3) or min(size) < 32:
        raise DatasetError(f"--size takes one or three sizes of at least 32 voxels, got {size}")
    shape = tuple(size * 3 if len(size) == 1 else size)
    if min(shape) < smallest_size(args.style):
        raise DatasetError(
            f"--style {args.style} needs at least {smallest_size(args.style)} voxels per side for its "
            f"large structures to fit, got {list(shape)}; use a larger --size or --style blobs"
        )
    config = PhantomConfig(shape=shape, spacing=tuple(args.spacing), style=args.style)
    write_dataset(out, cases=args.cases, seed=args.seed, config=config, layout=args.layout, jobs=args.jobs)
    last = args.seed + args.cases - 1
    print(f"wrote {args.cases} case(s) to {out} ({args.layout} layout, seeds {args.seed}..{last})")
    return 0
