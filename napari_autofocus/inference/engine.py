"""Whole-volume prediction with exact tiling, attention capture, progress and cancel.

What makes it fast on a CPU (measured, see ``benchmarks/inference.py``): channels-last-3d memory
layout (oneDNN then uses direct kernels for every dilation instead of im2col GEMM for rates >= 4),
``torch.inference_mode``, and tiles as large as the memory budget allows, split evenly over each
axis so little margin is recomputed; tiles with no ROI voxel are skipped. On CUDA: fp16/bf16
autocast and cuDNN autotuning. Autocast is never used on a CPU (30-70x slower here).

For BASIC (all-valid convolutions) the tiled result equals a single whole-volume pass exactly.
Autofocus and ASPP branches zero-pad large dilations inside each tile, so their outputs depend on
where tile borders fall; ``mode="reference"`` reproduces the reference's 75^3 -> 47^3 tiling.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.tiling import TilePlan, pad_volume, plan_tiles, tiles_touching
from napari_autofocus.nets import AutofocusConv, capture_attention

REFERENCE_OUTPUT_TILE = 47  # the reference: 75^3 input tiles, 47^3 output, stride 47
DEFAULT_MEMORY_BUDGET_GIB = 2.0


class Cancelled(AutofocusError):
    """The run was cancelled; no output was produced."""


@dataclass
class Prediction:
    """Outputs on the input grid (D, H, W); attention maps are NaN where nothing was computed."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    attention: dict[str, np.ndarray]  # "AF1".. -> (K, D, H, W)
    rates: dict[str, tuple[int, ...]]
    computed: np.ndarray  # (D, H, W) bool: voxels whose tile ran (others skipped outside the ROI)
    device: str
    mode: str
    tile_size: tuple[int, int, int]
    tiles_run: int
    tiles_skipped: int
    seconds: float
    peak_memory_gib: float
    timings: dict = field(default_factory=dict)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """ "auto" -> CUDA, then MPS, then CPU; a named device that is not available is a clear error."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AutofocusError(f"device {name!r} was asked for but this machine has no usable CUDA GPU")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise AutofocusError(f"device {name!r} was asked for but MPS is not available here")
    return dev


def bytes_per_input_voxel(model: nn.Module) -> int:
    """Rough peak activation bytes per input-tile voxel (float32), from the widest layer.

    Calibrated by measuring peak RSS of one tile on CPU with channels-last (AFN6: 740-940 B per
    voxel at 122^3-75^3 inputs, estimate 780; ASPP-S: 570, estimate 750; DM: 470, estimate 1040):
    it errs on the safe side so a budget is not exceeded.
    """
    widest = 0
    for m in model.modules():
        if isinstance(m, AutofocusConv):
            widest = max(widest, m.in_channels + m.out_channels * (m.K + 1))
        elif isinstance(m, nn.Conv3d | nn.Conv2d):
            widest = max(widest, m.in_channels + 2 * m.out_channels)
    return int(2.6 * max(widest, 1))


def tile_cap_for_budget(model: nn.Module, budget_gib: float) -> int:
    """Largest output tile edge whose input tile fits the activation budget."""
    voxels = budget_gib * 2**30 / bytes_per_input_voxel(model)
    edge = int(math.floor(voxels ** (1 / 3)))
    return max(edge - 2 * int(model.margin), 1)


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def make_plan(
    model: nn.Module,
    shape: Sequence[int],
    mode: str = "fast",
    memory_budget_gib: float = DEFAULT_MEMORY_BUDGET_GIB,
    tile_size: int | None = None,
) -> TilePlan:
    """The tiles ``predict_volume`` will run for a volume of ``shape`` (D, H, W)."""
    margin, multiple = int(model.margin), int(getattr(model, "input_multiple", 1))
    if mode == "reference":
        return plan_tiles(tuple(shape), margin, tile_size or REFERENCE_OUTPUT_TILE, multiple, even=False)
    if mode != "fast":
        raise AutofocusError(f"unknown inference mode {mode!r}; expected 'fast' or 'reference'")
    cap = tile_size or tile_cap_for_budget(model, memory_budget_gib)
    return plan_tiles(tuple(shape), margin, cap, multiple, even=True)


def prefers_channels_last(device: torch.device) -> bool:
    """Whether the channels_last_3d layout is the default on ``device``: on CPU oneDNN runs the
    dilated convolutions much faster in it; on CUDA the gain is unmeasured, so the layout stays."""
    return device.type == "cpu"


def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    *,
    mode: str = "fast",
    device: str | torch.device = "auto",
    probabilities: bool = False,
    attention: bool | Sequence[str] = False,
    attention_dtype=np.float16,
    roi: np.ndarray | None = None,
    pad_value: float = 0.0,
    memory_budget_gib: float = DEFAULT_MEMORY_BUDGET_GIB,
    tile_size: int | None = None,
    channels_last: bool | None = None,
    amp: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
) -> Prediction:
    """Segment a normalised (C, D, H, W) volume of any size; outputs align with the input grid.

    ``pad_value``: what the volume is padded with beyond its border; use the normalised value of
    the background (``normalization.padding_value(card.normalization)``, 0 for z-scored inputs with
    background set to 0) so border tiles see what training saw. ``roi``: a (D, H, W) mask or a
    bounding box ``((z0, z1), (y0, y1), (x0, x1))``; tiles with no ROI voxel are skipped and their
    voxels get label 0 and NaN attention. ``attention``: True for every autofocus layer or a list of
    names ("AF1", ...). ``progress(done, total)`` is called after each tile; ``cancel`` (a
    ``threading.Event`` or a callable) is checked before each tile and raises :class:`Cancelled`.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4:
        raise AutofocusError(f"expected a (channels, D, H, W) volume, got shape {image.shape}")
    if image.shape[0] != model.in_channels:
        raise AutofocusError(
            f"the model expects {model.in_channels} input channel(s) but the volume has {image.shape[0]}"
        )
    started = time.perf_counter()
    dev = resolve_device(device)
    shape = image.shape[1:]
    mask = _roi_mask(roi, shape)
    plan = make_plan(model, shape, mode, memory_budget_gib, tile_size)
    run = tiles_touching(plan, mask) if mask is not None else [True] * len(plan.tiles)
    total = sum(run)

    channels_last = prefers_channels_last(dev) if channels_last is None else channels_last
    amp = (dev.type == "cuda") if amp is None else (amp and dev.type == "cuda")
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.eval().to(dev, memory_format=memory_format)
    cudnn_benchmark = torch.backends.cudnn.benchmark  # restored afterwards: training may need determinism
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
    amp_dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16

    wanted = _wanted_layers(model, attention)
    geometry = {g["name"]: g for g in model.autofocus_geometry()} if wanted else {}
    covered = plan.covered_shape
    labels = np.zeros(covered, dtype=np.uint8 if model.num_classes <= 256 else np.int16)
    probs = np.zeros((model.num_classes, *covered), dtype=np.float32) if probabilities else None
    if probs is not None:
        probs[0] = 1.0  # skipped tiles: certain background
    maps = {
        name: np.full((len(geometry[name]["rates"]), *covered), np.nan, dtype=attention_dtype)
        for name in wanted
    }
    computed = np.zeros(covered, dtype=bool)
    padded = pad_volume(image, plan, pad_value)

    done = 0
    with torch.inference_mode(), _restore_cudnn_benchmark(cudnn_benchmark):
        for tile, active in zip(plan.tiles, run, strict=True):
            if not active:
                continue
            if _is_cancelled(cancel):
                raise Cancelled(f"cancelled after {done} of {total} tiles; nothing was written")
            x = torch.from_numpy(padded[(slice(None), *plan.input_slices(tile))][None]).to(dev)
            x = x.contiguous(memory_format=memory_format)
            with (
                capture_attention(model) as captured,
                torch.autocast(dev.type, dtype=amp_dtype, enabled=amp),
            ):
                logits = model(x)
            logits = logits.float()[0]
            out = tile.output_slices
            labels[out] = (
                logits.argmax(0).to(torch.uint8 if labels.dtype == np.uint8 else torch.int16).cpu().numpy()
            )
            if probs is not None:
                probs[(slice(None), *out)] = torch.softmax(logits, 0).cpu().numpy()
            for name in wanted:
                # attention grid of this layer starts `offset` input voxels into the tile; the
                # tile's output starts `margin` voxels in, so crop margin - offset per side.
                crop = int(model.margin) - int(geometry[name]["offset"])
                a = captured[name][0].float()
                a = a[(slice(None), *(slice(crop, crop + n) for n in tile.size))]
                maps[name][(slice(None), *out)] = a.cpu().numpy().astype(attention_dtype)
            computed[out] = True
            done += 1
            if progress is not None:
                progress(done, total)

    crop = tuple(slice(0, n) for n in shape)
    return Prediction(
        labels=np.ascontiguousarray(labels[crop]),
        probabilities=None if probs is None else np.ascontiguousarray(probs[(slice(None), *crop)]),
        attention={n: np.ascontiguousarray(m[(slice(None), *crop)]) for n, m in maps.items()},
        rates={n: tuple(geometry[n]["rates"]) for n in wanted},
        computed=np.ascontiguousarray(computed[crop]),
        device=str(dev),
        mode=mode,
        tile_size=plan.tile_size,
        tiles_run=done,
        tiles_skipped=len(plan.tiles) - total,
        seconds=time.perf_counter() - started,
        peak_memory_gib=_peak_memory_gib(dev),
    )


@contextlib.contextmanager
def _restore_cudnn_benchmark(value: bool):
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = value


def _roi_mask(roi, shape) -> np.ndarray | None:
    if roi is None:
        return None
    if isinstance(roi, np.ndarray) and roi.shape == tuple(shape):
        return roi.astype(bool)
    try:
        box = [(int(a), int(b)) for a, b in roi]
    except (TypeError, ValueError):
        raise AutofocusError(
            f"roi must be a boolean mask of shape {tuple(shape)} or ((z0, z1), (y0, y1), (x0, x1))"
        ) from None
    if len(box) != 3:
        raise AutofocusError(f"a bounding box needs 3 (start, stop) pairs, got {len(box)}")
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(max(a, 0), b) for a, b in box)] = True
    return mask


def _wanted_layers(model: nn.Module, attention) -> list[str]:
    names = [g["name"] for g in model.autofocus_geometry()] if hasattr(model, "autofocus_geometry") else []
    if attention is True:
        return names
    if not attention:
        return []
    unknown = [n for n in attention if n not in names]
    if unknown:
        raise AutofocusError(
            f"no autofocus layer named {', '.join(unknown)}; this model has {', '.join(names) or 'none'}"
        )
    return list(attention)
