"""``python -m src_training brain-phantom``: simulated tumours on the real MNI152 brain."""

from __future__ import annotations

import argparse

from napari_autofocus.errors import DatasetError


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
    parser.add_argument("--out", required=True, help="dataset folder to create (must not exist or be empty)")
    parser.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i")
    parser.add_argument(
        "--spacing", type=float, default=2.0, help="isotropic voxel size, 0.5 to 2 mm (default 2)"
    )
    parser.add_argument(
        "--layout", choices=["msd", "nnunet"], default="msd", help="folder layout (default msd)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="generate cases in N processes (same files)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from src_training.brain_anatomy import template_folder
    from src_training.brain_phantom import BrainPhantomConfig, write_brain_dataset

    if args.cases < 1:
        raise DatasetError(f"--cases must be at least 1, got {args.cases}")
    if args.jobs < 1:
        raise DatasetError(f"--jobs must be at least 1, got {args.jobs}")
    if not 0.5 <= args.spacing <= 2.0:
        raise DatasetError(f"--spacing must be 0.5 to 2 mm (the template is 1 mm), got {args.spacing}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not empty; choose a new folder so nothing is overwritten")
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
