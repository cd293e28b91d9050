"""Whole-volume prediction: exact by default, cropped to the foreground, with progress and cancel.

Modes:
- ``whole`` (default): outputs equal one forward pass over the whole cropped volume, so attention
  maps have no tile seams and do not depend on the memory budget. BASIC, AFN-n and ASPP stream
  layer by layer (``streaming.py``); on CUDA one pass runs when it fits; DM and other all-valid
  networks are exact under tiling and are tiled.
- ``tiled``: independent tiles as large as the budget allows (the earlier default; autofocus and
  ASPP branches zero-pad at every tile border).
- ``reference``: the authors' ``segment()``: the ROI's bounding box, 75^3 -> 47^3 tiles from its
  corner, zero padding, one row of tiles per batch; the benchmark's baseline.

Speed on a CPU comes from the channels-last-3d layout (oneDNN's direct kernels for every
dilation), batch norm folded into the kernels, ``torch.inference_mode``, and work not done: only
the foreground's bounding box, and in each slab of each layer only what the foreground's outputs
depend on. On CUDA: cuDNN autotuning. ``precision="bf16"`` autocasts to bfloat16 (CUDA, or CPUs
with native bf16; on a CPU only dilations <= 2 run in bf16, see ``nets.slabs``); the default
is float32 everywhere.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.normalization import roi_mask
from napari_autofocus.inference.outputs import Outputs
from napari_autofocus.inference.regions import PlaneBoxes, given_box, region_box, roi_mask_of
from napari_autofocus.inference.strategies import (
    DEFAULT_MEMORY_BUDGET_GIB,
    MODE_ALIASES,
    EngineRun,
    reference_cover,
    run_reference,
    run_tiled,
    run_whole,
)

MIN_MEMORY_BUDGET_GIB = 0.1  # the smallest budget users may ask for (predict --memory-gib, the plugin)


def check_memory_budget(gib, minimum: float = MIN_MEMORY_BUDGET_GIB) -> float:
    """The budget as a float, or a clear error for one that cannot be honoured (0, negative, NaN,
    inf, or below ``minimum``; library callers and tests may pass a smaller one to force spilling)."""
    try:
        value = float(gib)
    except (TypeError, ValueError):
        raise AutofocusError(f"the memory budget must be a number of GiB, got {gib!r}") from None
    if not math.isfinite(value) or value <= 0 or value < minimum:
        raise AutofocusError(f"the memory budget must be a finite number of GiB >= {minimum:g}, got {gib!r}")
    return value


MODES = ("whole", "tiled", "reference")
PRECISIONS = ("fp32", "bf16")


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` when ``device`` runs it at speed; else a clear error. bf16 needs a GPU with
    bf16 or a CPU with native bf16 (AVX-512 BF16 / AMX): elsewhere it runs 30-70x slower."""
    if precision not in PRECISIONS:
        raise AutofocusError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return precision
    if device.type == "cuda":
        if not torch.cuda.is_bf16_supported():
            raise AutofocusError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bf16; use fp32")
        return precision
    if device.type == "cpu":
        if not torch.cpu._is_avx512_bf16_supported():
            raise AutofocusError(
                "this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 would run many times slower; "
                "use fp32"
            )
        return precision
    raise AutofocusError(f"bf16 is supported on CPUs and CUDA GPUs, not on {device.type}; use fp32")


@dataclass
class Prediction:
    """Outputs on the input grid (D, H, W); attention maps are NaN where nothing was computed."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    attention: dict[str, np.ndarray]  # "AF1".. -> (K, D, H, W)
    logits: np.ndarray | None  # (classes, D, H, W) float32 when asked for; NaN where not computed
    rates: dict[str, tuple[int, ...]]
    computed: np.ndarray  # (D, H, W) bool: voxels the network predicted (False outside the crop)
    device: str
    mode: str  # "whole", "tiled" or "reference": what actually ran
    crop_box: tuple | None  # ((z0, z1), (y0, y1), (x0, x1)) computed; None when the ROI was empty
    tile_size: tuple[int, int, int]  # input extent of one tile (whole: of the cropped volume)
    tiles_run: int
    slabs_run: int
    seconds: float
    peak_memory_gib: float
    activations: str | None = None  # streamed runs: where full activations lived ("memory", "file")
    flops: float | None = None  # streamed runs: the convolutions' multiply-adds x 2 actually computed


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


def memory_in_use(device: torch.device) -> int:
    """Bytes the process holds now: resident memory on a CPU, allocated memory on CUDA."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:  # not Linux: the peak so far is the closest portable figure
        return int(_peak_memory_gib(device) * 2**30)


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def prefers_channels_last(device: torch.device) -> bool:
    """Whether the channels_last_3d layout is the default on ``device``: on CPU oneDNN runs the
    dilated convolutions much faster in it; on CUDA the gain is unmeasured, so the layout stays."""
    return device.type == "cpu"


def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    *,
    mode: str = "whole",
    device: str | torch.device = "auto",
    probabilities: bool = False,
    attention: bool | Sequence[str] = False,
    attention_dtype=np.float16,
    logits: bool = False,
    roi: np.ndarray | None = None,
    crop: bool = True,
    regions: bool = True,
    pad_value: float = 0.0,
    memory_budget_gib: float = DEFAULT_MEMORY_BUDGET_GIB,
    tile_size: int | None = None,
    channels_last: bool | None = None,
    precision: str = "fp32",
    one_pass: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel=None,
    spill_dir: str | None = None,
    scratch_outputs: bool | None = None,
) -> Prediction:
    """Segment a normalised (C, D, H, W) volume of any size; outputs align with the input grid.

    Modes: ``"whole"`` (default) gives exactly one forward pass over the whole cropped volume
    (per-layer streaming, or one pass on CUDA when it fits), whatever the memory budget;
    ``"tiled"`` runs independent tiles as large as the budget allows (autofocus/ASPP branches then
    zero-pad at tile borders); ``"reference"`` is the authors' ``segment()``: bounding box of the ROI,
    75^3 -> 47^3 tiles from its corner, zero padding, rows of tiles as batches.

    ``crop`` (default): compute only the bounding box of ``roi`` (a (D, H, W) mask or a box
    ``((z0, z1), (y0, y1), (x0, x1))``, or the foreground's box in each plane as
    ``regions.PlaneBoxes``; by default the voxels non-zero in any channel), reading the
    network's margin from real data where the volume has it. ``regions`` (default, whole mode,
    a mask ROI): output only the foreground's box in each plane, and compute in each slab of each
    layer only what those outputs depend on. Outside: label 0, background
    probability 1, attention NaN, ``computed`` False. ``pad_value``: what the volume is padded with
    beyond its border (the normalised background, ``normalization.padding_value``).
    ``memory_budget_gib``: the peak the process should stay under while it predicts (resident
    memory on a CPU, what it has already counts; allocated memory on CUDA). In whole mode, full
    activations that would not fit go to temporary files in ``spill_dir``; the outputs are the
    same either way; outputs that would take more than a quarter of the budget live in unlinked
    temporary files whose pages are handed back after each slab (``scratch_outputs`` forces
    either way). ``logits``: also return the raw network outputs (float32, NaN outside).
    ``precision``: "fp32" (default) or "bf16" (faster where the hardware has it; labels may differ
    from fp32 on a few voxels, see the README).
    ``progress(done, total)`` is called with 0 before the first slab or tile and after each one; ``cancel`` (a
    ``threading.Event`` or a callable) is checked before each and raises :class:`Cancelled`.
    """
    image = np.asarray(image, dtype=np.float32)
    planes = None  # the foreground's box in each plane, when whole mode computes only that
    if image.ndim != 4:
        raise AutofocusError(f"expected a (channels, D, H, W) volume, got shape {image.shape}")
    if image.shape[0] != model.in_channels:
        raise AutofocusError(
            f"the model expects {model.in_channels} input channel(s) but the volume has {image.shape[0]}"
        )
    mode = MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise AutofocusError(f"unknown inference mode {mode!r}; expected one of {', '.join(MODES)}")
    memory_budget_gib = check_memory_budget(memory_budget_gib, minimum=0.0)
    started = time.perf_counter()
    dev = resolve_device(device)
    shape = tuple(image.shape[1:])
    if isinstance(roi, PlaneBoxes):  # the foreground's box in each plane (the predictor's)
        box = roi.bounding_box() if crop or mode == "reference" else tuple((0, n) for n in shape)
        if regions and crop and mode == "whole" and box is not None:
            planes = roi.within(box)
    elif roi is not None and not isinstance(roi, np.ndarray):  # a box: no full-size mask is made
        box = given_box(roi, shape) if crop or mode == "reference" else tuple((0, n) for n in shape)
    else:
        mask = (
            roi_mask_of(roi, shape)
            if roi is not None
            else (roi_mask(image, "nonzero") if crop or mode == "reference" else None)
        )
        box = region_box(mask, shape, mode, crop, explicit=roi is not None)
        if regions and mode == "whole" and box is not None and mask is not None:
            planes = PlaneBoxes.of_mask(mask[tuple(slice(a, b) for a, b in box)])
        del mask
    tiles_box = box
    if mode == "reference" and box is not None:
        box = reference_cover(box, shape)  # where the authors' tiles put their output

    channels_last = prefers_channels_last(dev) if channels_last is None else channels_last
    wanted = _wanted_layers(model, attention)
    # outputs that would take more than a quarter of the budget live in scratch files (box and grid)
    voxels = int(np.prod([b - a for a, b in box])) + int(np.prod(shape)) if box is not None else 0
    scratch = scratch_outputs
    if scratch is None:
        need = Outputs.bytes_for(model, voxels, probabilities, wanted, attention_dtype, logits)
        scratch = need > memory_budget_gib * 2**30 / 4
    in_use = memory_in_use(dev)  # the budget bounds the process's peak: what it holds already counts
    run = EngineRun(
        model=model.eval(),
        device=dev,
        memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format,
        precision=check_precision(precision, dev),
        wanted=wanted,
        outputs=Outputs.allocate(
            model,
            box,
            probabilities,
            wanted,
            attention_dtype,
            logits,
            scratch=scratch,
            folder=spill_dir,
            planes=planes,
        ),
        budget=int(memory_budget_gib * 2**30),
        in_use=in_use,
        progress=progress,
        cancel=cancel,
    )
    cudnn_benchmark = torch.backends.cudnn.benchmark  # restored afterwards: training may need determinism
    run.model.to(dev, memory_format=run.memory_format)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode(), _restore_cudnn_benchmark(cudnn_benchmark):
        if box is None:
            used, details = mode, {}
        elif mode == "reference":
            used, details = mode, run_reference(run, image, tiles_box)
        elif mode == "whole":
            used, details = run_whole(run, image, box, pad_value, one_pass, spill_dir, tile_size)
        else:
            used, details = mode, run_tiled(run, image, box, pad_value, memory_budget_gib, tile_size)
    out = run.outputs.on_grid(shape)  # the activations are gone by now: room for full-size arrays
    return Prediction(
        labels=out.labels,
        probabilities=out.probabilities,
        attention=out.maps,
        logits=out.logits,
        rates=out.rates,
        computed=out.computed,
        device=str(dev),
        mode=used,
        crop_box=box,
        tile_size=details.get("tile_size", (0, 0, 0)),
        tiles_run=details.get("tiles_run", 0),
        slabs_run=details.get("slabs_run", 0),
        seconds=time.perf_counter() - started,
        peak_memory_gib=_peak_memory_gib(dev),
        activations=details.get("activations"),
        flops=details.get("flops"),
    )


@contextlib.contextmanager
def _restore_cudnn_benchmark(value: bool):
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = value


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
