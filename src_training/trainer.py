"""The training loop: run folder, data, model, optimisation, validation, checkpoints and export.

One :class:`Trainer` runs in every process (one process, or one per GPU under torchrun). Rank 0
owns the run folder: config.json, split.json, log.csv/log.jsonl/progress.png, checkpoint_latest.pt
(every epoch), checkpoint_best.pt (best validation mean Dice), checkpoint_final.pt and the model
file model.safetensors with its card. Every rank samples its own patches; validation cases are
shared out across ranks and their Dice scores summed, so validation costs 1/world_size of the time.

One class on purpose (setup, epochs, validation, checkpoints and export share the run's state); what
does not need that state lives beside it: ``run_folder``, ``optim``, ``checkpointing``, ``sampling``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from napari_autofocus.analysis.metrics import REGION_CONVENTIONS, dice
from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.normalization import padding_value
from napari_autofocus.io.atomic import write_text
from napari_autofocus.nets.checkpoints import nonfinite_tensors

from . import distributed
from .checkpointing import load_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap
from .config import TrainConfig
from .data import case_fingerprint, check_geometry, open_dataset
from .logging_utils import Progress, RunLogger
from .losses import SegmentationLoss
from .optim import build_optimizer, lr_factor
from .preprocess import default_cache_dir, prepare_cases
from .run_folder import check_run_folder, command_line, git_commit, prepare_run_folder
from .sampling import PatchStream

CHECKPOINT_FORMAT = "napari-autofocus-training-checkpoint"
SPLIT_SEED = 12345  # fixed, like nnU-Net's, so folds do not move when the training seed changes


def split_cases(
    names: list[str], val_cases: str | None, fold: int | None, num_folds: int
) -> tuple[list, list]:
    """(train, validation) case names: a fold of a fixed shuffle, a count, an explicit list, or 20 %."""
    names = sorted(names)
    order = [names[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(names))]
    if fold is not None:
        if not 0 <= fold < num_folds:
            raise AutofocusError(f"--fold must be in 0..{num_folds - 1}, got {fold}")
        val = [name for j, name in enumerate(order) if j % num_folds == fold]
    elif val_cases is not None and str(val_cases).strip().isdigit():
        val = order[: int(val_cases)]
    elif val_cases:
        val = [v.strip() for v in str(val_cases).split(",") if v.strip()]
        unknown = sorted(set(val) - set(names))
        if unknown:
            raise AutofocusError(f"--val-cases names unknown case(s) {unknown}")
    else:
        val = order[: max(1, round(0.2 * len(names)))] if len(names) >= 2 else []
    train = [n for n in names if n not in set(val)]
    if not train:
        raise AutofocusError("no training cases left after the validation split; lower --val-cases")
    return train, sorted(val)


def parameter_checksum(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class Trainer:
    def __init__(self, config: TrainConfig, flags: dict | None = None) -> None:
        self.config = config
        self.flags = dict(flags or {})
        self.info = distributed.env_info()
        self.out = Path(config.out)
        self.main = self.info.is_main

    # -- setup --------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.main:
            print(message, flush=True)

    def _check_settings(self):
        """Open the dataset and build the network, collecting every setting problem into one error.

        Runs before anything is written, so a refused run leaves no trace and the corrected
        command starts cleanly. Label values are checked as the cases are preprocessed (all
        problems listed together there too), also before the run folder is written.
        """
        from napari_autofocus.nets import build_network

        cfg, problems = self.config, []
        try:
            dataset = open_dataset(cfg.data)
            check_geometry(dataset)
        except AutofocusError as exc:
            raise AutofocusError(f"--data {cfg.data}: {exc}") from None
        try:
            split = split_cases([c.name for c in dataset.cases], cfg.val_cases, cfg.fold, cfg.num_folds)
        except AutofocusError as exc:
            problems.append(f"validation split: {exc}")
            split = None
        torch.manual_seed(cfg.seed)  # the weights depend on the seed only
        options = {"channels": list(cfg.channels)} if cfg.channels else {}
        net = out_size = None
        try:
            net = build_network(cfg.arch, len(dataset.modalities), dataset.num_classes, **options)
        except AutofocusError as exc:
            problems.append(
                f"--arch {cfg.arch}"
                + (f" --channels {','.join(map(str, cfg.channels))}" if cfg.channels else "")
                + f": {exc}"
            )
        shaped = net
        if shaped is None and options:  # the sizes do not depend on the widths: check them anyway
            try:
                shaped = build_network(cfg.arch, len(dataset.modalities), dataset.num_classes)
            except AutofocusError:
                shaped = None
        if shaped is not None:
            try:
                out_size = shaped.output_size(cfg.patch_size)
            except AutofocusError as exc:
                problems.append(f"--patch-size {cfg.patch_size}: {exc}")
        world = self.info.world_size
        if cfg.batch_size < world:
            problems.append(
                f"--batch-size {cfg.batch_size} is smaller than the number of processes ({world})"
            )
        if problems:
            raise AutofocusError(
                f"training cannot start; {len(problems)} setting problem(s):\n  " + "\n  ".join(problems)
            )
        return dataset, split, net, out_size

    def setup(self) -> None:
        cfg, info = self.config, self.info
        check_run_folder(self.out, self.config)
        self.device = distributed.select_device(cfg.device, info)
        distributed.init(info, self.device, cfg.ddp_timeout)
        self.dataset, (train_names, val_names), net, self.out_size = self._check_settings()
        self.train_names, self.val_names = train_names, val_names
        cache = Path(cfg.cache) if cfg.cache else default_cache_dir()
        wanted = [self.dataset.case(n) for n in train_names + val_names]
        # Every rank fills the cache with its share of the cases, then all read every case from it.
        mine = wanted[info.rank :: info.world_size]
        prepare_cases(self.dataset, mine, cache, cfg.normalization, cfg.spacing, log=self.log)
        distributed.barrier(info)  # every rank checked the folder and settings before rank 0 writes
        prepared = prepare_cases(self.dataset, wanted, cache, cfg.normalization, cfg.spacing)
        if self.main:
            prepare_run_folder(self.out, self.config)
            split = {"train": train_names, "val": val_names}
            write_text(self.out / "split.json", json.dumps(split, indent=1) + "\n")
        self.train_cases = prepared[: len(train_names)]
        self.val_cases = prepared[len(train_names) :]
        self.pad_value = padding_value(cfg.normalization)
        self.use_amp = self.device.type == "cuda" and cfg.amp in ("auto", "on")
        if cfg.amp == "on" and self.device.type != "cuda":
            self.log("note: --amp on is ignored off CUDA (autocast on CPU is many times slower here)")
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        net = net.to(self.device)
        from napari_autofocus.inference import prefers_channels_last

        # CPU DDP keeps the default layout: its gradient buckets are contiguous, channels-last gradients
        # would be copied every step ("Grad strides do not match bucket view strides").
        cpu_ddp = info.enabled and self.device.type == "cpu"
        self.channels_last = cfg.channels_last == "on" or (
            cfg.channels_last == "auto" and prefers_channels_last(self.device) and not cpu_ddp
        )
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last_3d)
        self.net = net
        self.model = distributed.wrap(net, info, self.device)
        self.optimizer = build_optimizer(cfg, self.model.parameters())
        scaler_on = self.use_amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda" if self.device.type == "cuda" else "cpu", enabled=scaler_on)
        self.criterion = SegmentationLoss(cfg.loss, cfg.dice_include_background)
        world, rank = info.world_size, info.rank
        self.rank_batch = cfg.batch_size // world + (1 if rank < cfg.batch_size % world else 0)
        self.total_iters = cfg.epochs * cfg.iters_per_epoch
        self.epoch, self.iteration = 0, 0
        self.best = {"dice": -1.0, "epoch": -1}
        self.logger = RunLogger(self.out, self.dataset.class_names, cfg.tensorboard) if self.main else None
        if cfg.resume:
            self._resume()

    # -- checkpoints --------------------------------------------------------------------------------
    def _payload(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "model": {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": {
                "name": self.config.schedule,
                "iteration": self.iteration,
                "total": self.total_iters,
            },
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best": dict(self.best),
            "history": self.logger.history if self.logger else [],
            "rng": rng_state(),
            # Patch RNGs are re-derived each epoch from these (see sampling.PatchStream).
            "sampler": {
                "seed": self.config.seed,
                "next_epoch": self.epoch,
                "world_size": self.info.world_size,
            },
            "config": self.config.to_dict(),
        }

    def _resume(self) -> None:
        state = load_checkpoint(self.out / "checkpoint_latest.pt")
        if state.get("format") != CHECKPOINT_FORMAT:
            raise AutofocusError(
                f"{self.out / 'checkpoint_latest.pt'} is not a training checkpoint of this package"
            )
        unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.best = dict(state["best"])
        set_rng_state(state["rng"])
        if self.logger:
            self.logger.restore(state["history"])
        self.log(f"resumed from {self.out / 'checkpoint_latest.pt'} after epoch {self.epoch}")

    def _save(self, name: str, payload: dict) -> None:
        if self.main:
            save_checkpoint(self.out / name, payload)

    # -- loop -----------------------------------------------------------------------------------------
    def _loader(self, epoch: int) -> DataLoader:
        cfg = self.config
        stream = PatchStream(
            self.train_cases, patch=cfg.patch_size, out=self.out_size, batch_size=self.rank_batch,
            n_batches=cfg.iters_per_epoch, seed=cfg.seed, rank=self.info.rank, epoch=epoch,
            mode=cfg.sampling, fg_fraction=cfg.fg_fraction, pad_value=self.pad_value,
            augment={"flip_axes": tuple(cfg.flip_axes), "intensity_scale": cfg.intensity_scale,
                     "intensity_shift": cfg.intensity_shift},
        )  # fmt: skip
        workers = min(cfg.workers, cfg.iters_per_epoch)
        return DataLoader(
            stream, batch_size=None, num_workers=workers, pin_memory=self.device.type == "cuda",
            prefetch_factor=2 if workers else None,
        )  # fmt: skip

    def train_epoch(self, epoch: int) -> list[float]:
        cfg = self.config
        self.model.train()
        losses = []
        progress = Progress(cfg.iters_per_epoch, f"epoch {epoch + 1}/{cfg.epochs}", enabled=self.main)
        for x, y in self._loader(epoch):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            lr = cfg.lr * lr_factor(cfg, self.iteration, self.total_iters)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                logits = self.model(x)
            loss = self.criterion(logits, y)
            if not bool(torch.isfinite(loss)):
                raise AutofocusError(
                    f"the training loss became {float(loss.detach())} at iteration {self.iteration + 1} "
                    f"(epoch {epoch + 1}); training stopped before that step changed the weights. "
                    + self._last_good()
                )
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.iteration += 1
            losses.append(float(loss.detach()))
            progress.update(len(losses), losses[-1])
        self.last_lr = lr
        return losses

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean Dice per foreground class over the validation cases, scored as ``evaluate`` scores them.

        The predictor's path on the cached preprocessed case (whole volume, cropped to the foreground,
        engine defaults), outputs back on the scan's own grid, Dice against the label there.
        """
        from napari_autofocus.inference.predictor import PredictOptions, run_network, to_source

        net = unwrap(self.model)
        net.eval()
        classes = [v for v in sorted(self.dataset.class_names) if v != 0]
        scores = torch.zeros(len(self.val_cases), len(classes), dtype=torch.float64)
        for i in range(self.info.rank, len(self.val_cases), self.info.world_size):
            case = self.val_cases[i]
            prepared = case.for_predictor()
            pred = to_source(
                run_network(net, prepared, self.config.normalization, PredictOptions(device=self.device)),
                prepared,
            )
            labels = np.asarray(pred.labels)
            truth = np.asarray(case.source_label)
            for j, value in enumerate(classes):
                scores[i, j] = dice(labels == value, truth == value)
        layout = torch.channels_last_3d if self.channels_last else torch.contiguous_format
        net.to(self.device, memory_format=layout)  # the engine may have chosen another layout
        net.train()
        if self.info.enabled:
            reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")
            scores = distributed.all_reduce_sum(scores.to(reduce_device), self.info).cpu()
        mean = scores.mean(dim=0)
        return {self.dataset.class_names[v]: float(mean[j]) for j, v in enumerate(classes)}

    def run(self) -> dict:
        """Train; a collective that times out (another process stopped) ends with a message."""
        try:
            return self._run()
        except RuntimeError as exc:
            if not (self.info.enabled and distributed.is_timeout(exc)):
                raise
            raise AutofocusError(
                f"rank {self.info.rank}: another training process did not answer within --ddp-timeout "
                f"{self.config.ddp_timeout:g} min (stopped, killed or far slower); stopping. The checkpoints "
                "of finished epochs are kept: --resume continues"
            ) from None

    def _run(self) -> dict:
        self.setup()
        cfg = self.config
        if self.epoch >= cfg.epochs:
            self.log(f"{self.out}: already trained {self.epoch} epoch(s); raise --epochs to train more")
        try:
            while self.epoch < cfg.epochs:
                start = time.perf_counter()
                epoch = self.epoch
                losses = self.train_epoch(epoch)
                self.epoch += 1
                record = {
                    "epoch": self.epoch,
                    "iteration": self.iteration,
                    "train_loss": float(np.mean(losses)),
                    "iteration_losses": losses,
                    "lr": self.last_lr,
                }
                last = self.epoch == cfg.epochs
                if self.val_cases and cfg.val_every and (self.epoch % cfg.val_every == 0 or last):
                    record["val_dice"] = self.validate()
                    record["val_mean_dice"] = float(np.mean(list(record["val_dice"].values())))
                record["time_s"] = round(time.perf_counter() - start, 3)
                improved = "val_mean_dice" in record and record["val_mean_dice"] > self.best["dice"]
                if improved:
                    self.best = {"dice": record["val_mean_dice"], "epoch": self.epoch}
                if self.main:
                    self.logger.log_epoch(record)
                    self._report(record)
                payload = self._payload()
                bad = nonfinite_tensors(payload["model"])
                if bad:
                    raise AutofocusError(
                        f"after epoch {self.epoch} {len(bad)} weight tensor(s) hold NaN or infinite values "
                        f"(e.g. {bad[0]}); not saved. " + self._last_good()
                    )
                self._save("checkpoint_latest.pt", payload)
                if improved:
                    self._save("checkpoint_best.pt", payload)
                if cfg.stop_after_epochs and self.epoch >= cfg.stop_after_epochs and not last:
                    self.log(
                        f"stopping after epoch {self.epoch} as asked (--stop-after-epochs); "
                        "continue with --resume"
                    )
                    return self._finish(final=False)
            return self._finish(final=True)
        finally:
            if self.logger:
                self.logger.close()
            distributed.cleanup(self.info)

    def _last_good(self) -> str:
        """Where the last good state is, for messages that stop a run."""
        if (self.out / "checkpoint_latest.pt").is_file():
            return (
                "checkpoint_latest.pt keeps the last good state: lower --lr or check the data, then "
                "--resume (with the same settings) or start a new run"
            )
        return (
            "No epoch had finished, so there is no checkpoint: lower --lr or check the data and start again"
        )

    def _report(self, record: dict) -> None:
        line = (
            f"epoch {record['epoch']}/{self.config.epochs}  loss {record['train_loss']:.4f}  "
            f"lr {record['lr']:.2e}  {record['time_s']:.1f}s"
        )
        if "val_dice" in record:
            dices = "  ".join(f"{k} {v:.3f}" for k, v in record["val_dice"].items())
            line += f"  val Dice {dices} (mean {record['val_mean_dice']:.3f})"
        Progress(0, "", enabled=True).finish(line)

    def _finish(self, final: bool) -> dict:
        if self.config.debug_checksums:
            checksum = parameter_checksum(self.model)
            (self.out / f"param_checksum_rank{self.info.rank}.txt").write_text(checksum + "\n")
        if final and self.main:
            self._save("checkpoint_final.pt", self._payload())
            self.export()
            self.log(f"done: {self.out / 'model.safetensors'}")
        distributed.barrier(self.info)
        return {"epoch": self.epoch, "iteration": self.iteration, "best": self.best}

    def export(self) -> None:
        """model.safetensors with a full card (what the napari plugin reads)."""
        from napari_autofocus.nets import ModelCard, save_model

        cfg, ds = self.config, self.dataset
        regions = dict(ds.regions)
        if cfg.regions:  # checked with the other settings before the first iteration
            regions = dict(REGION_CONVENTIONS[cfg.regions])
        spacing = cfg.spacing or np.median([c.spacing for c in self.train_cases], axis=0).tolist()
        history = self.logger.history if self.logger else []
        last_val = next((r for r in reversed(history) if "val_dice" in r), None)
        card = ModelCard(
            arch=unwrap(self.model).arch,
            in_channels=len(ds.modalities),
            num_classes=ds.num_classes,
            modalities=list(ds.modalities),
            class_names={str(k): v for k, v in ds.class_names.items()},
            regions={k: list(v) for k, v in regions.items()},
            normalization=dict(cfg.normalization),
            spacing=[float(s) for s in spacing],
            target_spacing=[float(s) for s in cfg.spacing] if cfg.spacing else None,
            provenance={
                "source": "src_training train",
                "command": command_line(self.flags),
                "dataset": ds.name,
                "dataset_path": str(cfg.data),  # as given: no machine paths in shared files
                "train_cases": len(self.train_names),
                "val_cases": self.val_names,
                "train_fingerprint": case_fingerprint([ds.case(n) for n in self.train_names]),
                "seed": cfg.seed,
                "epochs": self.epoch,
                "iterations": self.iteration,
                "patch_size": cfg.patch_size,
                "batch_size": cfg.batch_size,
                "preset": cfg.preset,
                "loss": cfg.loss,
                "optimizer": cfg.optimizer,
                "world_size": self.info.world_size,
                "git_commit": git_commit(),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            },
            metrics={
                "best_val_mean_dice": self.best["dice"] if self.best["epoch"] >= 0 else None,
                "best_epoch": self.best["epoch"] if self.best["epoch"] >= 0 else None,
                "final_val_dice": last_val["val_dice"] if last_val else None,
                "final_val_mean_dice": last_val["val_mean_dice"] if last_val else None,
                "weights": "final",
            },
            description=f"{unwrap(self.model).arch} trained on {ds.name} "
            f"({self.epoch} epochs, {self.iteration} iterations)",
        )
        save_model(unwrap(self.model), self.out / "model.safetensors", card)
