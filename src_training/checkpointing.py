"""Training checkpoints: written atomically, readable with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors and plain containers: model and optimizer state dicts, the LR
schedule position, the AMP scaler state, the epoch/iteration counters, the run's log history and
the RNG states of python, numpy and torch (as lists and tensors, never pickled objects), so a
killed run resumes bit-for-bit from its last checkpoint and nobody has to trust a pickle.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import numpy as np
import torch

from napari_autofocus.errors import CheckpointError
from napari_autofocus.io.atomic import atomic_path


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict:
    """python/numpy/torch(/cuda) generator states as tensors and lists of ints."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    nps = state["numpy"]
    keys = nps["keys"].numpy().astype(np.uint32)
    np.random.set_state((nps["kind"], keys, nps["pos"], nps["has_gauss"], nps["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``: never half-written."""
    try:
        with atomic_path(path, fsync=True) as tmp:
            torch.save(payload, tmp)
    except RuntimeError as exc:  # torch reports a failed write (e.g. a full disk) as a RuntimeError
        raise OSError(
            errno.EIO, f"could not write the checkpoint ({exc}); is the disk full?", str(path)
        ) from None


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc})") from None
