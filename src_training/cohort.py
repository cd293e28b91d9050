"""Many cases, one shard of them: deterministic sharding, a read/compute/write pipeline, failures, progress.

Sharding: case names are sorted and dealt round-robin over ``num_parts x world_size`` shards
(torchrun's rank ``r`` inside scheduler part ``p`` is shard ``p * world_size + r``), before any
output is looked at, so two shards never touch, skip or clean up each other's cases.

The pipeline overlaps the network with the files: a reader thread loads the next case while the
network runs, and a writer thread compresses and moves the previous case's outputs into place, so
the device waits only when reading or writing takes longer than computing. A failed case stops the
run, or with ``keep_going`` is recorded (case, files, reason) and the others go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from napari_autofocus.errors import AutofocusError
from napari_autofocus.io.prediction_files import WRITTEN_BY


@dataclass(frozen=True)
class Shard:
    """Which of ``count`` interleaved parts of the sorted cases this process handles."""

    index: int = 0
    count: int = 1

    def take(self, names: Sequence[str]) -> list[str]:
        return sorted(names)[self.index :: self.count]

    @property
    def is_whole(self) -> bool:
        return self.count == 1

    def label(self) -> str:
        return "all cases" if self.is_whole else f"shard {self.index + 1} of {self.count}"

    def suffix(self) -> str:
        """File-name suffix of this shard's own summary files ('' for a whole run)."""
        return "" if self.is_whole else f"_part{self.index + 1:03d}of{self.count:03d}"


def launcher_ranks(environ=os.environ) -> tuple[int, int]:
    """(rank, world size) that torchrun (or any launcher setting RANK/WORLD_SIZE) gives this process."""
    try:
        rank, world = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise AutofocusError(
            f"RANK={environ.get('RANK')!r} / WORLD_SIZE={environ.get('WORLD_SIZE')!r} are not integers"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise AutofocusError(f"RANK={rank} must lie in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return rank, world


def shard_from(num_parts: int = 1, part_id: int = 0, environ=os.environ) -> Shard:
    """This process's shard from ``--num-parts/--part-id`` (nnU-Net's convention) and the launcher."""
    if num_parts < 1:
        raise AutofocusError(f"--num-parts must be 1 or more, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise AutofocusError(
            f"--part-id must lie in 0..{num_parts - 1} (--num-parts {num_parts}), got {part_id}"
        )
    rank, world = launcher_ranks(environ)
    return Shard(part_id * world + rank, num_parts * world)


def rank_device(device: str) -> str:
    """Under a launcher with several processes, ``auto``/``cuda`` means this process's local GPU."""
    _, world = launcher_ranks()
    if world < 2:
        return device  # one process: the engine resolves the name itself
    from src_training.distributed import env_info, select_device

    return str(select_device(device, env_info()))


def gather_from_ranks(value) -> list:
    """Every launcher process's ``value``, on every process; it waits for the slowest (up to a day),
    so it is also the barrier after which rank 0 writes a cohort's summary."""
    import torch
    import torch.distributed as dist

    from src_training import distributed

    info = distributed.env_info()
    distributed.init(info, torch.device("cpu"), timeout_minutes=24 * 60)
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    distributed.cleanup(info)
    return gathered


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read a megabyte at a time: the identity of a model file or a record."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_cohort_options(parser) -> None:
    """The options every cohort command (predict, evaluate --model, explain) shares."""
    parser.add_argument(
        "--num-parts",
        type=int,
        default=1,
        help="split the cases into N parts (e.g. a SLURM array); default 1",
    )
    parser.add_argument("--part-id", type=int, default=0, help="which part this run does, 0..N-1 (default 0)")
    parser.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="skip cases whose outputs are complete (made with the same settings); redo interrupted ones",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="a failing case is reported (in the summary and a failures file) and the others go on; "
        "the exit status is then 3",
    )
    parser.add_argument(
        "--sequential",
        dest="overlap",
        action="store_false",
        help="read, compute and write one case after the other (default: reading the next case and "
        "writing the last one overlap the network; memory then holds up to three cases)",
    )


@dataclass
class CaseFailure:
    case: str
    files: list[str]
    reason: str


@dataclass
class CohortReport:
    """What a run of one shard did; ``busy_seconds`` is the time the network was computing."""

    done: list[str] = field(default_factory=list)
    failed: list[CaseFailure] = field(default_factory=list)
    busy_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def idle_fraction(self) -> float:
        """Share of the wall time the network waited for reading or writing (0 when nothing ran)."""
        if self.wall_seconds <= 0 or not self.done:
            return 0.0
        return max(0.0, 1.0 - self.busy_seconds / self.wall_seconds)


def run_pipeline(
    cases: Sequence[str],
    read: Callable[[str], object],
    compute: Callable[[str, object], object],
    write: Callable[[str, object], None],
    *,
    files_of: Callable[[str], list[str]] = lambda case: [],
    keep_going: bool = False,
    overlap: bool = True,
    on_written: Callable[[str], None] | None = None,
) -> CohortReport:
    """Run ``read -> compute -> write`` for every case; reading and writing in threads when ``overlap``.

    Without ``keep_going`` the first failure (of any stage) stops the run after the stage in
    progress and is raised as it was; with it, failures go into the report. ``compute`` always runs
    on the calling thread (torch, the device, Ctrl-C).
    """
    report = CohortReport()
    started = time.perf_counter()
    stop = threading.Event()
    errors: list[BaseException] = []
    ended = threading.Event()  # the reader's end-of-cases mark was consumed

    def fail(case: str, exc: BaseException) -> None:
        if keep_going and isinstance(exc, Exception):
            report.failed.append(CaseFailure(case, files_of(case), _reason(exc)))
        else:
            errors.append(exc)
            stop.set()

    def finish(case: str, result) -> None:
        try:
            write(case, result)
        except BaseException as exc:  # noqa: BLE001 - recorded or re-raised on the main thread
            fail(case, exc)
            return
        report.done.append(case)
        if on_written:
            on_written(case)

    if not overlap:
        loaded_items = ((case, _attempt(read, case)) for case in cases)
    else:
        loaded: queue.Queue = queue.Queue(maxsize=1)

        def reader() -> None:
            for case in cases:
                if stop.is_set():
                    break
                item = _attempt(read, case)
                while not stop.is_set():
                    try:
                        loaded.put((case, item), timeout=0.2)
                        break
                    except queue.Full:
                        continue
            loaded.put(None)

        def items():
            while True:
                got = loaded.get()
                if got is None:
                    ended.set()
                    return
                yield got

        loaded_items = items()
        reading = threading.Thread(target=reader, name="cohort-reader", daemon=True)
        reading.start()
        to_write: queue.Queue = queue.Queue(maxsize=1)

        def writer() -> None:
            while (got := to_write.get()) is not None:
                if not stop.is_set():
                    finish(*got)
                del got
                to_write.task_done()

        writing = threading.Thread(target=writer, name="cohort-writer", daemon=True)
        writing.start()
    try:
        for case, item in loaded_items:
            if stop.is_set():
                break
            if isinstance(item, _Failed):
                fail(case, item.exc)
                continue
            begun = time.perf_counter()
            try:
                result = compute(case, item)
            except BaseException as exc:  # noqa: BLE001 - recorded or re-raised below
                report.busy_seconds += time.perf_counter() - begun
                fail(case, exc)
                continue
            del item
            report.busy_seconds += time.perf_counter() - begun
            if overlap:
                to_write.join()  # one result being written at a time: memory stays at two cases' outputs
                to_write.put((case, result))
            else:
                finish(case, result)
            del result
    except BaseException:
        stop.set()
        raise
    finally:
        if overlap:
            stop_reader(stop, loaded, reading, ended.is_set() and not stop.is_set())
            to_write.put(None)
            writing.join()
        report.wall_seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return report


@dataclass
class _Failed:
    exc: BaseException


def _attempt(read, case):
    try:
        return read(case)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread
        return _Failed(exc)


def stop_reader(
    stop: threading.Event, loaded: queue.Queue, reading: threading.Thread, finished: bool
) -> None:
    """End the reader thread. After the last case (``finished``) it is ending by itself; a run that
    ends early sets ``stop`` (pending writes are dropped) and drains the queue so the reader sees it."""
    if not finished:
        stop.set()
        while reading.is_alive():
            with contextlib.suppress(queue.Empty):
                loaded.get(timeout=0.1)
    reading.join()


def _reason(exc: BaseException) -> str:
    from napari_autofocus.errors import describe_os_error

    if isinstance(exc, AutofocusError):
        return str(exc)
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    return f"{type(exc).__name__}: {exc}"


def failures_path(out: Path, command: str, shard: Shard) -> Path:
    return Path(out) / f"{command}_failures{shard.suffix()}.json"


def record_failures(out: Path, command: str, shard: Shard, failed: Sequence[CaseFailure]) -> Path | None:
    """Write this shard's failures file (or remove its own stale one when nothing failed).

    A file of that name that this tool did not write is left alone and reported."""
    from napari_autofocus.io.atomic import write_text
    from napari_autofocus.io.prediction_files import read_marked_json

    path = failures_path(out, command, shard)
    previous = read_marked_json(path)
    if path.exists() and previous is None:
        raise AutofocusError(
            f"{path} was not written by napari-autofocus, so it is not replaced; move it away"
        )
    if not failed:
        if previous is not None:
            path.unlink()
        return None
    record = {
        "written_by": WRITTEN_BY,
        "command": command,
        "shard": {"index": shard.index, "count": shard.count},
        "failed": [{"case": f.case, "files": f.files, "reason": f.reason} for f in failed],
    }
    write_text(path, json.dumps(record, indent=2) + "\n")
    return path


class CohortProgress:
    """Progress of the whole cohort, as rank 0 sees it in the shared output folder.

    ``complete(case)`` says whether a case's outputs are in place (its JSON, written last); the
    cohort count covers every shard's cases, so the rate and time left are the whole run's."""

    def __init__(self, cases: Sequence[str], complete: Callable[[str], bool], show: bool = True):
        self.cases = list(cases)
        self.complete = complete
        self.show = show
        self.seen: set[str] = set()  # complete once seen: each case's JSON is read until it is there
        self.started = time.perf_counter()
        self.at_start = self.count()

    def count(self) -> int:
        self.seen |= {case for case in self.cases if case not in self.seen and self.complete(case)}
        return len(self.seen)

    def line(self) -> str:
        done = self.count()
        total = len(self.cases)
        elapsed = time.perf_counter() - self.started
        new = done - self.at_start
        text = f"cohort: {done}/{total} cases done"
        if new > 0 and elapsed > 0:
            rate = new / elapsed * 60
            left = (total - done) / (new / elapsed)
            text += f" · {rate:.1f} cases/min · about {format_duration(left)} left"
        return text

    def report(self, _case: str = "") -> None:
        if self.show:
            print(self.line(), flush=True)


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def summary_line(report: CohortReport, skipped: int, shard: Shard, verb: str = "predicted") -> str:
    """One line for the end of a shard's run: counts, the network's busy share, and failures."""
    parts = [f"{len(report.done)} {verb}", f"{skipped} already complete"]
    if report.failed:
        parts.append(f"{len(report.failed)} failed")
    busy = 1.0 - report.idle_fraction
    return (
        f"{shard.label()}: " + ", ".join(parts) + f" in {report.wall_seconds:.1f} s"
        + (f"; the computing thread was busy {busy:.0%} of the time" if report.done else "")
    )  # fmt: skip
