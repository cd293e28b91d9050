"""Run logs: log.csv and log.jsonl per epoch, progress.png, optional TensorBoard, terminal progress.

Only rank 0 logs. The history also lives in the checkpoint, so after ``--resume`` the log files are
rewritten from it and hold exactly the epochs the resumed model has seen (no duplicated rows from
epochs that were lost when the run was killed).
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from napari_autofocus.io.atomic import atomic_path, write_text


class RunLogger:
    """Per-epoch records -> CSV, JSONL, progress.png (matplotlib Agg) and TensorBoard if asked."""

    def __init__(self, folder: str | Path, class_names: dict[int, str], tensorboard: bool = False) -> None:
        self.folder = Path(folder)
        self.class_names = class_names
        self.history: list[dict] = []
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.folder / "tensorboard"))
            except ImportError:
                print("note: tensorboard is not installed; --tensorboard ignored", file=sys.stderr)

    def restore(self, history: list[dict]) -> None:
        self.history = list(history)
        self._write_files()

    def log_epoch(self, record: dict) -> None:
        self.history.append(record)
        self._write_files()
        if self.writer is not None:
            step = record["epoch"]
            self.writer.add_scalar("train/loss", record["train_loss"], step)
            self.writer.add_scalar("train/lr", record["lr"], step)
            for name, value in (record.get("val_dice") or {}).items():
                self.writer.add_scalar(f"val/dice_{name}", value, step)
            self.writer.flush()

    def _columns(self) -> list[str]:
        fg = [name for value, name in sorted(self.class_names.items()) if value != 0]
        return ["epoch", "iteration", "train_loss", "lr", "time_s", "val_mean_dice"] + [
            f"val_dice_{n}" for n in fg
        ]

    def _write_files(self) -> None:
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.history)
        write_text(self.folder / "log.jsonl", lines)
        with atomic_path(self.folder / "log.csv") as tmp, tmp.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(self._columns())
            for r in self.history:
                row = [
                    r["epoch"],
                    r["iteration"],
                    r["train_loss"],
                    r["lr"],
                    r["time_s"],
                    r.get("val_mean_dice", ""),
                ]
                row += [(r.get("val_dice") or {}).get(c[len("val_dice_") :], "") for c in self._columns()[6:]]
                writer.writerow(row)
        self.plot()

    def plot(self) -> None:
        """progress.png: training loss and validation Dice per class over epochs."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 4), dpi=90)
        ax_loss, ax_dice = fig.subplots(1, 2)
        epochs = [r["epoch"] for r in self.history]
        ax_loss.plot(epochs, [r["train_loss"] for r in self.history], "b-", label="train loss")
        ax_loss.set_xlabel("epoch")
        ax_loss.set_ylabel("loss")
        ax_loss.legend(loc="upper right")
        val = [r for r in self.history if r.get("val_dice")]
        for name in val[0]["val_dice"] if val else {}:
            ax_dice.plot(
                [r["epoch"] for r in val], [r["val_dice"][name] for r in val], "-o", ms=3, label=name
            )
        if val:
            ax_dice.plot([r["epoch"] for r in val], [r["val_mean_dice"] for r in val], "k--", label="mean")
            ax_dice.legend(loc="lower right", fontsize=8)
        ax_dice.set_ylim(0, 1)
        ax_dice.set_xlabel("epoch")
        ax_dice.set_ylabel("validation Dice")
        fig.tight_layout()
        with atomic_path(self.folder / "progress.png", suffix=".png") as tmp:
            fig.savefig(tmp)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A one-line progress bar on a terminal; on a pipe/file only plain per-epoch lines are printed."""

    def __init__(self, total: int, label: str, stream=None, enabled: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.total, self.label, self.enabled = total, label, enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def update(self, done: int, loss: float) -> None:
        if not self.tty:
            return
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        width = 30
        filled = int(width * done / max(self.total, 1))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} loss {loss:.4f} {rate:.2f} it/s")
        self.stream.flush()

    def finish(self, line: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(line + "\n")
        self.stream.flush()
