"""Multi-process training under ``torchrun``: process group, device per rank, DDP wrapping.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them we run as a single process. The
backend is NCCL on CUDA and gloo otherwise (CPU tests/CI). SyncBatchNorm is used only on CUDA:
on CPU DDP refuses it ("SyncBatchNorm layers only work with GPU modules"). Each rank samples its
own patches (different seeds), so nothing but gradients and a few metrics cross processes.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def select_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` picks CUDA (this rank's local GPU), then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            from napari_autofocus.errors import AutofocusError

            raise AutofocusError("--device cuda requested but torch sees no CUDA device")
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return torch.device(name)


def init(info: DistInfo, device: torch.device, timeout_minutes: float = 30.0) -> None:
    """Join the process group (no-op for a single process) and stop if the launcher dies.

    ``timeout_minutes``: how long a collective waits for the other processes before this one
    stops with a message (validation runs on every rank in parallel and must fit in it).
    """
    if info.enabled and not dist.is_initialized():
        watch_launcher()
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))


def watch_launcher(interval: float = 1.0) -> threading.Thread:
    """End this worker when the process that started it (torchrun) is gone, instead of training on as
    an orphan: a SIGKILLed launcher cannot stop its workers itself."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                print(
                    f"rank {os.environ.get('RANK', '?')}: the launcher (process {parent}) is gone; stopping",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)

    thread = threading.Thread(target=watch, name="launcher-watch", daemon=True)
    thread.start()
    return thread


def is_timeout(exc: BaseException) -> bool:
    """True for the error a collective raises when another process did not answer in time."""
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device) -> torch.nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(model, device_ids=[device.index])
    return DistributedDataParallel(model)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
