"""The options and checks every dataset generator command shares (``phantom``, ``brain-phantom``)."""

from __future__ import annotations

from pathlib import Path

from napari_autofocus.errors import DatasetError


def add_arguments(parser) -> None:
    parser.add_argument("--out", required=True, help="dataset folder to create (must not exist or be empty)")
    parser.add_argument("--cases", type=int, default=10, help="number of cases (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed+i")
    parser.add_argument(
        "--layout", choices=["msd", "nnunet"], default="msd", help="folder layout (default msd)"
    )
    parser.add_argument("--jobs", type=int, default=1, help="generate cases in N processes (same files)")


def checked_output(args) -> Path:
    """The folder to write, after the counts are checked; a folder holding files is never written into."""
    if args.cases < 1:
        raise DatasetError(f"--cases must be at least 1, got {args.cases}")
    if args.jobs < 1:
        raise DatasetError(f"--jobs must be at least 1, got {args.jobs}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} exists and is not empty; choose a new folder so nothing is overwritten")
    return out
