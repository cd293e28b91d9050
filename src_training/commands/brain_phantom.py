"""``python -m src_training brain-phantom``: simulated tumours on the real MNI152 brain."""

from __future__ import annotations

import argparse

from napari_autofocus.errors import DatasetError
from src_training.commands.generated_dataset import add_arguments, checked_output


def register(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description="Write cases on real anatomy: the MNI152 ICBM 2009a T1 template and tissue maps (from "
        "nilearn's package data) under a random smooth deformation, with simulated tumours in the BraTS 2023 "
        "labels (1 necrotic core, 2 oedema, 3 enhancing rim) that push the tissue aside, and simulated T1c, "
        "T2 and FLAIR channels. The same seed always gives the same files; the template's copyright notice "
        "is written beside them.",
        epilog="example: python -m src_training brain-phantom --out data/brain --cases 40 --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.add_argument(
        "--spacing", type=float, default=2.0, help="isotropic voxel size, 0.5 to 2 mm (default 2)"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from src_training.brain_anatomy import template_folder
    from src_training.brain_phantom_cases import BrainPhantomConfig, write_brain_dataset

    if not 0.5 <= args.spacing <= 2.0:
        raise DatasetError(f"--spacing must be 0.5 to 2 mm (the template is 1 mm), got {args.spacing}")
    out = checked_output(args)
    template_folder()  # a missing nilearn is said before anything is created
    config = BrainPhantomConfig(spacing=args.spacing)
    write_brain_dataset(
        out, cases=args.cases, seed=args.seed, config=config, layout=args.layout, jobs=args.jobs
    )
    last = args.seed + args.cases - 1
    print(
        f"wrote {args.cases} case(s) to {out} ({args.layout} layout, seeds {args.seed}..{last}, "
        f"{args.spacing:g} mm voxels)"
    )
    return 0
