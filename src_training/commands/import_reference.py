"""``import-reference``: convert an authors' ``.pth.tar`` checkpoint into our model file.

The result carries a model card (channels, class names, regions, geometry, provenance with the
source file's hash), so the plugin can use it without knowing where it came from.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_autofocus.errors import AutofocusError


def register(subparsers, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    parser.add_argument(
        "checkpoint", type=Path, help="reference checkpoint, e.g. AFN1_390_checkpoint.pth.tar"
    )
    parser.add_argument("--out", type=Path, required=True, help="output model file (.safetensors)")
    parser.add_argument("--arch", help="expected architecture; refused if the checkpoint holds another")
    parser.add_argument(
        "--modalities", nargs="+", help="input channel names in order (default Flair T1 T1c T2)"
    )
    parser.add_argument(
        "--class-names",
        "--classes-names",
        dest="class_names",
        nargs="+",
        help="class names in label order, or VALUE=NAME pairs (default: BraTS 2015 labels)",
    )
    parser.add_argument("--description", help="free text for the model card")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    parser.set_defaults(func=run)
    return parser


def parse_class_names(items: list[str]) -> dict[str, str]:
    """["background", "tumour"] or ["0=background", "2=edema"] -> {"0": ..., ...}."""
    if all("=" in item for item in items):
        pairs = [item.split("=", 1) for item in items]
        try:
            return {str(int(k)): v for k, v in pairs}
        except ValueError:
            raise AutofocusError(f"--class-names: VALUE must be an integer in {items}") from None
    if any("=" in item for item in items):
        raise AutofocusError("--class-names: give either all names in order or all VALUE=NAME pairs")
    return {str(i): name for i, name in enumerate(items)}


def run(args: argparse.Namespace) -> int:
    from napari_autofocus.nets import load_model, save_model

    if args.out.exists() and not args.force:
        raise AutofocusError(f"{args.out} exists; pass --force to overwrite it")
    hints = {}
    if args.arch:
        hints["arch"] = args.arch
    if args.modalities:
        hints["modalities"] = list(args.modalities)
    if args.class_names:
        hints["class_names"] = parse_class_names(args.class_names)
    if args.description:
        hints["description"] = args.description
    model, card = load_model(args.checkpoint, **hints)
    if card.modalities and len(card.modalities) != card.in_channels:
        raise AutofocusError(
            f"{len(card.modalities)} modalities given but the model has {card.in_channels} inputs"
        )
    if card.class_names and len(card.class_names) != card.num_classes:
        raise AutofocusError(
            f"{len(card.class_names)} class names given but the model has {card.num_classes} classes"
        )
    card = save_model(model, args.out, card)
    names = ", ".join(card.modalities) or "unnamed"
    print(
        f"wrote {args.out}: {card.arch}, {card.in_channels} inputs ({names}), "
        f"{card.num_classes} classes, receptive field {card.receptive_field}, margin {card.margin}"
    )
    return 0
