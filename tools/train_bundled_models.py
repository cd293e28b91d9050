"""Rebuild the bundled models: data, one training run per architecture, then the held-out benchmark.

``--dataset phantom`` (default) trains on the size-decides phantoms (benchmarks/phantom_table.py
scores them); ``--dataset brain`` on simulated tumours on the MNI152 brain (benchmarks/brain_table.py).

All architectures get the same budget (iterations x batch x patch, same cases, split, sampling,
optimiser and seed) and train side by side, one process each, sharing the machine. ``--fit-seconds``
first times a few iterations of every run (all at once, as they will run) and picks the largest
iteration count that fits; the commands actually run are written to ``<work>/commands.sh`` so a
run can be repeated with fixed numbers.

    python tools/train_bundled_models.py --work build/bundled --device cuda --fit-seconds 300
    python tools/train_bundled_models.py --work build/bundled --device cuda --epochs 20
    python tools/train_bundled_models.py --work build/bundled --device cuda --epochs 20 --resume
    python tools/train_bundled_models.py --work build/brain --dataset brain --archs AFN6 BASIC \
        --channels 12,12,16,16,16,16,20,20 --patch-size 57 --batch-size 4 --epochs 20 --device cpu

Stopping the driver (Ctrl-C, SIGTERM, a time limit) stops every run at once; ``--resume`` continues
them from their last finished epoch (each run's ``checkpoint_latest.pt``), so a budget can be spent
in pieces, e.g. on a GPU lease with a per-command time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src_training.phantom_styles import STYLES  # noqa: E402

ARCHS = ("AFN6", "BASIC", "ASPP_C", "ASPP_S", "DM")
# DeepMedic's valid convolutions shrink its input by 48 (and it needs a multiple of 3): 93 -> 45^3
# labels per patch, close to the 47^3 that a 75^3 patch gives the other networks.
PATCH = {"DM": 93}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", required=True, help="folder for data/, runs/ and the results")
    p.add_argument("--archs", nargs="+", default=list(ARCHS))
    p.add_argument("--device", default="auto")
    p.add_argument("--cases", type=int, default=40, help="training phantom cases, seeds 0.. (default 40)")
    p.add_argument("--val-cases", type=int, default=4)
    p.add_argument("--dataset", choices=["phantom", "brain"], default="phantom", help="what to train on")
    p.add_argument("--style", choices=STYLES, default="clusters", help="phantom style (--dataset phantom)")
    p.add_argument("--channels", help="8 trunk widths, e.g. 12,12,16,16,16,16,20,20 (default: the paper's)")
    p.add_argument("--patch-size", type=int, default=75)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iters-per-epoch", type=int, default=25)
    p.add_argument("--epochs", type=int, help="fixed number of epochs (else --fit-seconds decides)")
    p.add_argument("--fit-seconds", type=float, help="pick the epochs so that training takes about this long")
    p.add_argument("--workers", type=int, default=2, help="data-loading processes per run")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes for making phantoms")
    p.add_argument(
        "--heldout-cases",
        type=int,
        default=10,
        help="held-out cases for the benchmark (0: skip it, e.g. to keep a GPU lease short; run it later)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resume", action="store_true", help="continue the runs already in WORK/runs from their last epoch"
    )
    p.add_argument("--export", help="copy every model to EXPORT/<arch>_<dataset>.safetensors once trained")
    args = p.parse_args(argv)
    if args.resume and not args.epochs:
        p.error("--resume needs --epochs (the count the runs started with), not a new --fit-seconds estimate")
    if args.heldout_cases < 0:
        p.error(f"--heldout-cases must be 0 (skip the benchmark) or more, got {args.heldout_cases}")
    return args


def python_env() -> dict[str, str]:
    """The environment for child processes: this checkout first on the import path."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def train_command(args, arch: str, out: str, epochs: int, iters: int, val_every: int) -> list[str]:
    widths = ["--channels", args.channels] if args.channels else []
    return [
        sys.executable, "-m", "src_training", "train", "--data", data_folder(args), "--arch", arch, *widths,
        "--out", out, "--preset", "paper-adam-dice", "--loss", "ce+dice",
        "--patch-size", str(PATCH.get(arch, args.patch_size)), "--batch-size", str(args.batch_size),
        "--epochs", str(epochs), "--iters-per-epoch", str(iters), "--sampling", "per-class",
        "--channels-last", "--val-cases", str(args.val_cases), "--val-every", str(val_every),
        "--workers", str(args.workers), "--device", args.device, "--seed", str(args.seed),
        "--cache", f"cache/{arch}",
    ]  # fmt: skip


def data_folder(args) -> str:
    return f"data/{args.dataset}_train"


def data_command(args) -> list[str]:
    """The generator call that writes the training cases (seeds 0..) into ``data_folder``."""
    if args.dataset == "brain":
        return [sys.executable, "-m", "src_training", "brain-phantom", "--out", data_folder(args), "--cases",
                str(args.cases), "--seed", "0", "--jobs", str(args.jobs)]  # fmt: skip
    return [sys.executable, "-m", "src_training", "phantom", "--out", data_folder(args), "--cases",
            str(args.cases), "--seed", "0", "--style", args.style, "--jobs", str(args.jobs)]  # fmt: skip


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def run_all(commands: dict[str, list[str]], work: Path, logs: Path) -> dict[str, float]:
    """Start every command at once; wait for all; return each one's wall time (raise if one failed).

    If the wait is cut short (an error, Ctrl-C, SIGTERM) the runs are stopped too, not left training.
    """
    logs.mkdir(parents=True, exist_ok=True)
    env = {**python_env(), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    seconds, failed = {}, []
    with contextlib.ExitStack() as stack:
        procs = {}
        stack.callback(_stop_all, procs)
        with contextlib.suppress(ValueError):  # not the main thread: leave SIGTERM alone
            stack.callback(signal.signal, signal.SIGTERM, signal.signal(signal.SIGTERM, _stop_on_sigterm))
        for arch, cmd in commands.items():
            log = stack.enter_context(open(logs / f"{arch}.log", "a"))
            procs[arch] = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        while len(seconds) < len(procs):  # poll, so each run gets its own finishing time
            for arch, proc in procs.items():
                if arch not in seconds and proc.poll() is not None:
                    seconds[arch] = round(time.perf_counter() - start, 1)
                    if proc.returncode != 0:
                        failed.append(arch)
            time.sleep(0.5)
    if failed:
        tails = {a: (logs / f"{a}.log").read_text()[-2000:] for a in failed}
        raise SystemExit(
            f"training failed for {failed}:\n" + "\n".join(f"--- {a}\n{t}" for a, t in tails.items())
        )
    return seconds


def _stop_all(procs: dict[str, subprocess.Popen]) -> None:
    """Terminate the runs still going (each saves nothing mid-epoch; --resume picks up the last epoch)."""
    running = [proc for proc in procs.values() if proc.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def seconds_per_iteration(args, work: Path) -> dict[str, float]:
    """Time epoch 2 of a 2-epoch run per architecture (epoch 1 pays start-up and autotuning)."""
    iters = 6
    commands = {a: train_command(args, a, f"probe/{a}", 2, iters, 0) for a in args.archs}
    run_all(commands, work, work / "logs" / "probe")
    timing = {}
    for arch in args.archs:
        records = [
            json.loads(line) for line in (work / "probe" / arch / "log.jsonl").read_text().splitlines()
        ]
        timing[arch] = records[-1]["time_s"] / iters
    return timing


def check_existing_data(data_json: Path, args) -> None:
    """Reuse training data from an earlier run only when it is what this run asks for."""
    meta = json.loads(data_json.read_text())
    if args.dataset == "brain":
        if meta.get("numTraining") != args.cases:
            raise SystemExit(
                f"{data_json.parent} holds {meta.get('numTraining')} brain cases, but this run asks for "
                f"{args.cases}; use another --work folder"
            )
        return
    style = meta.get("phantom", {}).get("config", {}).get("style", "blobs")
    if style != args.style or meta.get("numTraining") != args.cases:
        raise SystemExit(
            f"{data_json.parent} holds {meta.get('numTraining')} '{style}' cases, but this run asks for "
            f"{args.cases} '{args.style}' cases; use another --work folder"
        )


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = python_env()
    data_json = work / data_folder(args) / "dataset.json"
    if data_json.is_file():
        check_existing_data(data_json, args)
    else:
        subprocess.run(data_command(args), cwd=work, env=env, check=True)
    report = {"args": vars(args)}
    if args.epochs:
        epochs = args.epochs
    elif args.fit_seconds:
        timing = seconds_per_iteration(args, work)
        slowest = max(timing.values())
        epochs = max(1, int(0.9 * args.fit_seconds / slowest / args.iters_per_epoch))
        report["seconds_per_iteration_side_by_side"] = timing
        print(
            "seconds per iteration, all runs side by side:",
            json.dumps(timing),
            "-> epochs",
            epochs,
            flush=True,
        )
    else:
        raise SystemExit("give --epochs or --fit-seconds")
    val_every = max(1, epochs // 4)
    commands = {
        a: train_command(args, a, f"runs/{a}", epochs, args.iters_per_epoch, val_every) for a in args.archs
    }
    for arch, command in commands.items():
        if continue_run(work / "runs" / arch, args.resume):
            command.append("--resume")
    (work / "commands.sh").write_text(
        "\n".join(shlex.join(["python", *c[1:]]) for c in commands.values()) + "\n"
    )
    report["train_seconds"] = run_all(commands, work, work / "logs")
    print("training wall time per run (s):", json.dumps(report["train_seconds"]), flush=True)
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.export:
        Path(args.export).mkdir(parents=True, exist_ok=True)
        for arch in args.archs:
            shutil.copy(
                work / "runs" / arch / "model.safetensors",
                Path(args.export) / f"{arch}_{args.dataset}.safetensors",
            )
    command = benchmark_command(args)
    if args.heldout_cases == 0:
        print(f"benchmark skipped (--heldout-cases 0); to run it, in {work}: {shlex.join(command)}")
        return 0
    subprocess.run([sys.executable, *command[1:]], cwd=work, env=env, check=True)
    return 0


def continue_run(run: Path, resume: bool) -> bool:
    """Whether ``run`` is resumed; an earlier run is never overwritten or mixed in by accident."""
    started = run.is_dir() and any(run.iterdir())
    if not started:
        return False
    if not resume:
        raise SystemExit(f"{run} already holds a run; add --resume to continue it, or use another --work")
    if not (run / "checkpoint_latest.pt").is_file():
        raise SystemExit(
            f"--resume: {run} has no checkpoint_latest.pt (it stopped before its first epoch); "
            "remove the folder to start it over"
        )
    return True


def benchmark_command(args) -> list[str]:
    """The benchmark call that scores every run of this work folder (run from inside it)."""
    cases = args.heldout_cases or 10
    if args.dataset == "brain":
        return [
            "python", str(REPO / "benchmarks" / "brain_table.py"), "--models",
            *[f"runs/{a}/model.safetensors" for a in args.archs], "--cases", str(cases),
            "--jobs", str(args.jobs), "--device", args.device, "--json", "benchmark.json",
        ]  # fmt: skip
    return [
        "python", str(REPO / "benchmarks" / "phantom_table.py"), "--models",
        *[f"runs/{a}/model.safetensors" for a in args.archs], "--cases", str(cases),
        "--style", args.style, "--jobs", str(args.jobs), "--device", args.device, "--json", "benchmark.json",
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
