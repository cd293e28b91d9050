"""A training run's folder: which files it holds, when an existing one may be used, the command
that reproduces it, and the code version it was trained with."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

from napari_autofocus.errors import AutofocusError
from napari_autofocus.io.atomic import write_text

RUN_FILES = (
    "config.json", "split.json", "log.csv", "log.jsonl", "progress.png", "checkpoint_latest.pt",
    "checkpoint_best.pt", "checkpoint_final.pt", "model.safetensors",
)  # fmt: skip
# What a start writes before the first epoch: a folder holding only these is restarted, not refused.
STARTUP_FILES = ("config.json", "split.json")


def is_stale_temporary(path: Path) -> bool:
    """A hidden temporary file of ours (``.<run file>.<random>``) that a killed write left behind."""
    return path.is_file() and any(path.name.startswith(f".{name}.") for name in RUN_FILES)


def check_run_folder(out: Path, cfg) -> None:
    """Refuse a folder holding another run; accept one a failed start left (settings only)."""
    existing = [p.name for p in out.iterdir() if not is_stale_temporary(p)] if out.is_dir() else []
    if cfg.resume:
        if not (out / "checkpoint_latest.pt").is_file():
            started = "config.json" in existing
            raise AutofocusError(
                f"--resume: {out} has no checkpoint_latest.pt to continue from"
                + (
                    " (the run stopped before its first epoch ended); run the same command without "
                    "--resume to start it again"
                    if started
                    else ""
                )
            )
    elif set(existing) - set(STARTUP_FILES) and not cfg.force:
        raise AutofocusError(
            f"run folder {out} is not empty ({', '.join(sorted(existing)[:5])}...); use --resume to "
            "continue it, --force to start over in it, or choose a new --out"
        )


def prepare_run_folder(out: Path, cfg) -> None:
    """Create the folder, drop what a killed write left, start over on --force, write config.json."""
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():  # left by a run killed while it wrote a file
        if is_stale_temporary(path):
            path.unlink(missing_ok=True)
    if cfg.force and not cfg.resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# List settings whose flag takes one comma-separated value (``--channels 30,30,...``); other lists
# (``--spacing 1 1 1``) take one argument per value.
COMMA_LIST_FLAGS = {"channels", "flip_axes"}


def command_line(flags: dict) -> str:
    """A command that reproduces the run: the flags given, spelt the way the CLI parses them."""
    parts = ["python", "-m", "src_training", "train"]
    for key, value in sorted(flags.items()):
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is False or value is None:  # not "in (False, None)": 0 == False
            continue
        elif isinstance(value, (list, tuple)) and key in COMMA_LIST_FLAGS:
            parts += [flag, ",".join(map(str, value))]
        elif isinstance(value, (list, tuple)):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)
