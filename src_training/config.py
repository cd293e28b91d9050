"""Training settings: defaults < preset < ``--config`` JSON file < command-line flags.

Every resolved value is written to ``<run>/config.json``, so a run folder says exactly how its
model was trained and ``--resume`` continues with the same settings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from napari_autofocus.analysis.metrics import REGION_CONVENTIONS
from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.normalization import DEFAULT_NORMALIZATION

PRESETS: dict[str, dict] = {
    # The authors' train.py: RMSprop, per-iteration poly LR, plain cross-entropy, 50/50 fg/bg patches.
    "brats-reference": {
        "optimizer": "rmsprop",
        "lr": 1e-3,
        "rmsprop_alpha": 0.9,
        "eps": 1e-4,
        "momentum": 0.6,
        "weight_decay": 1e-4,
        "schedule": "poly",
        "poly_power": 0.9,
        "loss": "ce",
        "batch_size": 10,
        "patch_size": 75,
        "sampling": "fg-bg",
    },
    # The paper's pelvic setting: Adam 1e-3, then 1e-4 for the last third, soft Dice, per-class sampling.
    "paper-adam-dice": {
        "optimizer": "adam",
        "lr": 1e-3,
        "eps": 1e-8,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "schedule": "step",
        "step_at": 2 / 3,
        "step_factor": 0.1,
        "loss": "dice",
        "batch_size": 7,
        "patch_size": 75,
        "sampling": "per-class",
    },
}
OPTIMIZERS = ("rmsprop", "adam", "sgd")
SCHEDULES = ("poly", "step", "constant")


@dataclass
class Recipe:
    """What is learned: the data, network, optimisation, sampling, augmentation, preprocessing,
    validation split, seed and numerics (mixed precision and memory layout change the numbers).
    A resumed run keeps all of it: ``--resume`` refuses a flag that would change any of these."""

    data: str = ""
    arch: str = "AFN1"
    channels: list[int] | None = None  # 8 trunk widths; None = the paper's
    preset: str = "brats-reference"
    iters_per_epoch: int = 50
    patch_size: int = 75
    batch_size: int = 10
    lr: float = 1e-3
    optimizer: str = "rmsprop"
    momentum: float = 0.6
    weight_decay: float = 1e-4
    rmsprop_alpha: float = 0.9
    eps: float = 1e-4
    schedule: str = "poly"
    poly_power: float = 0.9
    step_at: float = 2 / 3
    step_factor: float = 0.1
    loss: str = "ce"
    dice_include_background: bool = False
    sampling: str = "fg-bg"
    fg_fraction: float = 0.5
    flip_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    intensity_scale: float = 0.0
    intensity_shift: float = 0.0
    normalization: dict = field(default_factory=lambda: dict(DEFAULT_NORMALIZATION))
    spacing: list[float] | None = None  # resample to this voxel size (mm, napari axis order)
    val_cases: str | None = None  # a count ("4") or comma-separated case names
    fold: int | None = None
    num_folds: int = 5
    seed: int = 0
    amp: str = "auto"
    channels_last: str = "auto"  # channels_last_3d layout; auto = on for CPU (oneDNN is much faster there)


@dataclass
class RunOptions:
    """Where and how a run goes, free to differ when it is resumed: the run folder (a copied or moved
    run resumes where it now is), how long it goes on, how often it validates, what the card calls
    the label groups, the device and loader workers, the DDP timeout, the cache, logging, and two
    developer switches (``debug_checksums``, ``stop_after_epochs``) that are not in ``--help``."""

    out: str = ""
    epochs: int = 100
    val_every: int = 1
    regions: str | None = None  # region convention for the card and validation report
    device: str = "auto"
    workers: int = 2
    ddp_timeout: float = 30.0  # minutes a process waits for the others before it stops with a message
    cache: str | None = None
    tensorboard: bool = False
    debug_checksums: bool = False
    stop_after_epochs: int | None = None
    resume: bool = False
    force: bool = False
    config: str | None = None


RECIPE_FIELDS = frozenset(f.name for f in dataclasses.fields(Recipe))
RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunOptions))
RESUME_MUTABLE = RUN_FIELDS  # what may differ from config.json when resuming


@dataclass
class TrainConfig:
    """A recipe and the options of one run. ``config.lr`` and ``config.out`` read through to the
    part that holds them; ``config.json`` stores both as one flat object, as it always has."""

    recipe: Recipe = field(default_factory=Recipe)
    run: RunOptions = field(default_factory=RunOptions)

    @classmethod
    def from_flat(cls, values: dict) -> TrainConfig:
        return cls(
            Recipe(**{k: v for k, v in values.items() if k in RECIPE_FIELDS}),
            RunOptions(**{k: v for k, v in values.items() if k in RUN_FIELDS}),
        )

    def __getattr__(self, name: str):
        if name.startswith("__") or name in ("recipe", "run"):
            raise AttributeError(name)
        for part in (self.__dict__.get("recipe"), self.__dict__.get("run")):
            if part is not None and name in part.__dataclass_fields__:
                return getattr(part, name)
        raise AttributeError(f"TrainConfig has no setting {name!r}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self.recipe), **dataclasses.asdict(self.run)}

    def validate(self) -> None:
        checks = [
            (
                self.optimizer in OPTIMIZERS,
                f"--optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}",
            ),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (
                self.loss in ("ce", "dice", "ce+dice"),
                f"--loss must be ce, dice or ce+dice, got {self.loss!r}",
            ),
            (
                self.sampling in ("fg-bg", "per-class"),
                f"--sampling must be fg-bg or per-class, not {self.sampling!r}",
            ),
            (self.amp in ("auto", "on", "off"), f"--amp must be auto, on or off, got {self.amp!r}"),
            (
                self.channels_last in ("auto", "on", "off"),
                f"--channels-last must be auto, on or off, got {self.channels_last!r}",
            ),
            (
                self.device in ("auto", "cpu", "cuda", "mps"),
                f"--device must be auto/cpu/cuda/mps, not {self.device!r}",
            ),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.iters_per_epoch >= 1, f"--iters-per-epoch must be >= 1, got {self.iters_per_epoch}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.val_every >= 0, f"--val-every must be >= 0 (0 = never), got {self.val_every}"),
            (self.workers >= 0, f"--workers must be >= 0, got {self.workers}"),
            (
                isinstance(self.ddp_timeout, (int, float)) and 0 < self.ddp_timeout < 10_000,
                f"--ddp-timeout must be a positive number of minutes, got {self.ddp_timeout!r}",
            ),
            (
                self.regions is None or self.regions in REGION_CONVENTIONS,
                f"--regions must be one of {', '.join(REGION_CONVENTIONS)}, got {self.regions!r}",
            ),
            (
                self.spacing is None or (len(self.spacing) == 3 and all(float(v) > 0 for v in self.spacing)),
                f"--spacing must be three positive voxel sizes in mm, got {self.spacing!r}",
            ),
            (bool(self.data), "--data is required"),
            (bool(self.out), "--out is required"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise AutofocusError("; ".join(problems))


def _read_file(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise AutofocusError(f"--config {path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise AutofocusError(f"--config {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AutofocusError(f"--config {path}: expected a JSON object of settings")
    return data


def resolve(flags: dict, base: dict | None = None) -> TrainConfig:
    """Merge defaults, preset, ``--config`` file (or ``base``, e.g. a run's config.json) and flags."""
    known = RECIPE_FIELDS | RUN_FIELDS
    file_values = dict(base or {})
    if flags.get("config"):
        file_values.update(_read_file(flags["config"]))
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise AutofocusError(
            f"unknown setting(s) {unknown} in the configuration file; known: {sorted(known)}"
        )
    preset = flags.get("preset") or file_values.get("preset") or Recipe.preset
    if preset not in PRESETS:
        raise AutofocusError(f"unknown --preset {preset!r}; expected one of {', '.join(PRESETS)}")
    values = TrainConfig().to_dict()
    values.update(PRESETS[preset])
    values.update(file_values)
    values.update({k: v for k, v in flags.items() if k in known})
    values["preset"] = preset
    values["channels_last"] = layout_setting(values["channels_last"])
    config = TrainConfig.from_flat(values)
    config.validate()
    return config


def layout_setting(value) -> str:
    """``channels_last`` as auto/on/off; runs saved before it had "auto" stored true or false."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def check_resume_changes(saved: dict, flags: dict) -> None:
    """Refuse flags, or settings of a ``--config`` file, that would make a resumed run compute
    something else than the saved one (a flag wins over the file, as in :func:`resolve`)."""
    if "channels_last" in saved:
        saved = {**saved, "channels_last": layout_setting(saved["channels_last"])}
    requested = {}  # setting -> (value, how the user asked for it)
    if flags.get("config"):
        for k, v in _read_file(flags["config"]).items():
            requested[k] = (v, f"{k} in {flags['config']}")
    for k, v in flags.items():
        requested[k] = (v, f"--{k.replace('_', '-')}")
    changed = []
    for k, (v, source) in requested.items():
        if k == "channels_last":
            v = layout_setting(v)
        if k not in RESUME_MUTABLE and k in saved and saved[k] != v:
            changed.append(f"{source} ({saved.get(k)!r} -> {v!r})")
    if changed:
        raise AutofocusError(
            "--resume continues a run with its saved config.json; these settings would change it: "
            + ", ".join(changed)
            + ". Start a new run folder instead."
        )
