"""Command-line entry point: ``python -m src_training <command> ...``.

Subcommands live in :mod:`src_training.commands`, one module each, and are imported only when
the command line names them, so ``--help`` stays fast and a command never pays for another's imports.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from napari_autofocus.errors import AutofocusError, describe_os_error

# (command, module, one-line help). Order is the order shown in --help.
COMMANDS = [
    ("predict", "predict", "segment NIfTI scans with a model file (labels, attention maps)"),
    ("summary", "summary", "parameters, receptive field, margin and output size per architecture"),
    ("import-reference", "import_reference", "convert an authors' .pth.tar checkpoint into our model file"),
    ("phantom", "phantom", "write a synthetic dataset whose labels depend on structure size"),
    ("brain-phantom", "brain_phantom", "write simulated brain tumours on the real MNI152 anatomy"),
    ("train", "train", "train a network on a Decathlon / nnU-Net v2 folder (run folder + model file)"),
    ("evaluate", "evaluate", "score predictions (or a model's predictions) per case, class and region"),
    ("explain", "explain", "attention statistics over a cohort: rates per structure, lesion size and layer"),
    ("export", "export_model", "export a model as a bioimage.io package or a MONAI bundle"),
]

EPILOG = """examples:
  python -m src_training predict --model afn6.safetensors --input case.nii.gz --out pred/ --attention
  python -m src_training summary
  python -m src_training summary --arch AFN6 --patch 75 --json
  python -m src_training import-reference AFN6_390_checkpoint.pth.tar --out afn6.safetensors
  python -m src_training phantom --out data/phantom --cases 20 --seed 0
  python -m src_training brain-phantom --out data/brain --cases 40 --seed 0
  python -m src_training train --data data/phantom --arch AFN1 --out runs/afn1 --epochs 50
  python -m src_training train --out runs/afn1 --resume
  torchrun --standalone --nproc_per_node=2 -m src_training train --data Task01_BrainTumour --out runs/ddp
  python -m src_training evaluate --model runs/afn1/model.safetensors --data data/phantom --out eval/afn1
  python -m src_training evaluate --pred preds/ --labels Task01_BrainTumour/labelsTr --regions msd --out eval/
  python -m src_training explain --pred preds/ --labels Task01_BrainTumour/labelsTr --out explain/
  python -m src_training export --format bioimageio afn6.safetensors --out packages/
  python -m src_training export --format monai-bundle afn6.safetensors --out bundles/
"""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m src_training",
        description="Train, evaluate and inspect autofocus segmentation networks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = _named_command(argv)
    for name, module, help_text in COMMANDS:
        if wanted is None or wanted == name:
            mod = importlib.import_module(f"src_training.commands.{module}")
            mod.register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _named_command(argv: list[str] | None) -> str | None:
    names = {name for name, _, _ in COMMANDS}
    for arg in argv or []:
        if arg in names:
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except AutofocusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permission denied, read-only folder...: one line, no traceback
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
