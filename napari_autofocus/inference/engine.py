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
dilation), batch norm folded into the kernels, ``torch.inference_mode``, and computing only the
foreground's bounding box. On CUDA: bf16/fp16 autocast and cuDNN autotuning; never autocast on a
CPU (30-70x slower here).
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
from napari_autofocus.inference.tiling import TilePlan, plan_tiles
from napari_autofocus.nets import AutofocusConv, capture_attention

REFERENCE_OUTPUT_TILE = 47  # the reference: 75^3 input tiles, 47^3 output, stride 47
DEFAULT_MEMORY_BUDGET_GIB = 2.0  # peak memory of the process while it predicts
MIN_MEMORY_BUDGET_GIB = 0.1  # the smallest budget users may ask for (predict --memory-gib, the plugin)
MIN_TILE_OUTPUT = 8  # tiles never shrink below this output edge, whatever the budget


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
_MODE_ALIASES = {"fast": "tiled", "exact": "whole"}  # earlier names


class Cancelled(AutofocusError):
    """The run was cancelled; no output was produced."""


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
    return max(edge - 2 * int(model.margin), MIN_TILE_OUTPUT)


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


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


def make_plan(
    model: nn.Module,
    shape: Sequence[int],
    mode: str = "tiled",
    memory_budget_gib: float = DEFAULT_MEMORY_BUDGET_GIB,
    tile_size: int | None = None,
) -> TilePlan:
    """The tiles ``predict_volume`` will run for a volume of ``shape`` (D, H, W)."""
    margin, multiple = int(model.margin), int(getattr(model, "input_multiple", 1))
    mode = _MODE_ALIASES.get(mode, mode)
    if mode == "reference":
        return plan_tiles(tuple(shape), margin, tile_size or REFERENCE_OUTPUT_TILE, multiple, even=False)
    if mode != "tiled":
        raise AutofocusError(f"make_plan is for tiled modes; got {mode!r}, expected 'tiled' or 'reference'")
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
    mode: str = "whole",
    device: str | torch.device = "auto",
    probabilities: bool = False,
    attention: bool | Sequence[str] = False,
    attention_dtype=np.float16,
    logits: bool = False,
    roi: np.ndarray | None = None,
    crop: bool = True,
    pad_value: float = 0.0,
    memory_budget_gib: float = DEFAULT_MEMORY_BUDGET_GIB,
    tile_size: int | None = None,
    channels_last: bool | None = None,
    amp: bool | None = None,
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
    ``((z0, z1), (y0, y1), (x0, x1))``; by default the voxels non-zero in any channel), reading the
    network's margin from real data where the volume has it. Outside: label 0, background
    probability 1, attention NaN, ``computed`` False. ``pad_value``: what the volume is padded with
    beyond its border (the normalised background, ``normalization.padding_value``).
    ``memory_budget_gib``: the peak the process should stay under while it predicts (resident
    memory on a CPU, what it has already counts; allocated memory on CUDA). In whole mode, full
    activations that would not fit go to temporary files in ``spill_dir``; the outputs are the
    same either way; outputs that would take more than a quarter of the budget live in unlinked
    temporary files whose pages are handed back after each slab (``scratch_outputs`` forces
    either way). ``logits``: also return the raw network outputs (float32, NaN outside).
    ``progress(done, total)`` is called with 0 before the first slab or tile and after each one; ``cancel`` (a
    ``threading.Event`` or a callable) is checked before each and raises :class:`Cancelled`.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 4:
        raise AutofocusError(f"expected a (channels, D, H, W) volume, got shape {image.shape}")
    if image.shape[0] != model.in_channels:
        raise AutofocusError(
            f"the model expects {model.in_channels} input channel(s) but the volume has {image.shape[0]}"
        )
    mode = _MODE_ALIASES.get(mode, mode)
    if mode not in MODES:
        raise AutofocusError(f"unknown inference mode {mode!r}; expected one of {', '.join(MODES)}")
    memory_budget_gib = check_memory_budget(memory_budget_gib, minimum=0.0)
    started = time.perf_counter()
    dev = resolve_device(device)
    shape = tuple(image.shape[1:])
    if roi is not None and not isinstance(roi, np.ndarray):  # a box: no full-size mask is made
        box = _given_box(roi, shape) if crop or mode == "reference" else tuple((0, n) for n in shape)
    else:
        mask = (
            _roi_mask(roi, shape)
            if roi is not None
            else (roi_mask(image, "nonzero") if crop or mode == "reference" else None)
        )
        box = _region(mask, shape, mode, crop, explicit=roi is not None)
        del mask
    tiles_box = box
    if mode == "reference" and box is not None:
        box = _reference_cover(box, shape)  # where the authors' tiles put their output

    channels_last = prefers_channels_last(dev) if channels_last is None else channels_last
    wanted = _wanted_layers(model, attention)
    # outputs that would take more than a quarter of the budget live in scratch files (box and grid)
    voxels = int(np.prod([b - a for a, b in box])) + int(np.prod(shape)) if box is not None else 0
    scratch = scratch_outputs
    if scratch is None:
        need = Outputs.bytes_for(model, voxels, probabilities, wanted, attention_dtype, logits)
        scratch = need > memory_budget_gib * 2**30 / 4
    in_use = memory_in_use(dev)  # the budget bounds the process's peak: what it holds already counts
    run = _Run(
        model=model.eval(),
        device=dev,
        memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format,
        amp=(dev.type == "cuda") if amp is None else (amp and dev.type == "cuda"),
        wanted=wanted,
        outputs=Outputs.allocate(
            model, box, probabilities, wanted, attention_dtype, logits, scratch=scratch, folder=spill_dir
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
            used, details = mode, _run_reference(run, image, tiles_box)
        elif mode == "whole":
            used, details = _run_whole(run, image, box, pad_value, one_pass, spill_dir, tile_size)
        else:
            used, details = mode, _run_tiled(run, image, box, pad_value, memory_budget_gib, tile_size)
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
    )


@dataclass
class _Run:
    model: nn.Module
    device: torch.device
    memory_format: torch.memory_format
    amp: bool
    wanted: list[str]
    outputs: Outputs
    budget: int
    in_use: int
    progress: Callable[[int, int], None] | None
    cancel: object
    done: int = 0
    total: int = 0

    def autocast(self):
        dtype = (
            torch.bfloat16 if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
        )
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.amp)

    def begin(self, total: int) -> None:
        """Say how many parts the run has before the first one starts (a bar from the start)."""
        self.total = total
        if self.progress is not None:
            self.progress(0, total)

    def check_cancel(self) -> None:
        if _is_cancelled(self.cancel):
            raise Cancelled(f"cancelled after {self.done} of {self.total} steps; nothing was written")

    def step_done(self) -> None:
        self.outputs.release()  # scratch outputs keep only the slab being written in memory
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array)[None].to(self.device).contiguous(memory_format=self.memory_format)


def _run_whole(run: _Run, image, box, pad_value, one_pass, spill_dir, tile_size) -> tuple[str, dict]:
    """Exact mode: per-layer streaming (or one pass); models without streaming steps are tiled."""
    from napari_autofocus.inference.streaming import (
        WORKING_SET_BYTES,
        CropStore,
        network_steps,
        plan_stream,
        run_stream,
    )

    model, margin = run.model, int(run.model.margin)
    steps = network_steps(model)
    if steps is None:  # all-valid networks (DM) are exact under tiling; others have no streaming plan
        return "tiled", _run_tiled(run, image, box, pad_value, run.budget / 2**30, tile_size)
    extent = tuple(b - a + 2 * margin for a, b in box)
    if one_pass is None:
        one_pass = run.device.type == "cuda" and _fits_on_gpu(model, extent, run.device)
    if one_pass:
        return "whole", _run_one_pass(run, crop_with_margin(image, box, margin, pad_value))
    working_set = min(WORKING_SET_BYTES, run.budget // 4)
    plan = plan_stream(steps, image.shape[0], extent, working_set)
    run.begin(plan.total_slabs)
    outputs = run.outputs

    def on_output(step, start, logits, attentions):
        for a in attentions:
            if a.name in outputs.maps:
                outputs.write_layer_attention(a.name, a.offset, margin, (a.start, 0, 0), a.data)
        if logits is not None:
            outputs.write_logits((start, 0, 0), logits)

    # the input is read from the scan slab by slab (no copy of it) unless one copy is affordable
    copy_bytes = 4 * image.shape[0] * int(np.prod(extent))
    held = run.in_use + outputs.nbytes + working_set + _model_bytes(model)
    x = CropStore(image, box, margin, pad_value, run.device, run.memory_format)
    if held + copy_bytes <= 0.5 * run.budget:
        x = x.whole()  # one copy: a tensor whose planes are handed back as the first layer passes
        held += copy_bytes
    # what the budget leaves for full activations after the process, the input, the outputs and one
    # slab's working set, with headroom for the convolutions' own buffers and the allocator
    free = int(0.9 * run.budget) - held
    placement = run_stream(
        steps,
        x,
        plan,
        memory_bytes=max(free, 0),
        on_output=on_output,
        before_slab=run.check_cancel,
        after_slab=run.step_done,
        compute_context=run.autocast,
        spill_dir=spill_dir,
    )
    return "whole", {
        "tile_size": extent,
        "slabs_run": run.done,
        "activations": placement,
    }


def _run_one_pass(run: _Run, source: np.ndarray) -> dict:
    run.begin(1)
    run.check_cancel()
    x = run.tensor(source)
    with capture_attention(run.model) as captured, run.autocast():
        logits = run.model(x)
    margin = int(run.model.margin)
    run.outputs.write_logits((0, 0, 0), logits)
    for geometry in run.model.autofocus_geometry():
        if geometry["name"] in run.wanted:
            offset, name = int(geometry["offset"]), geometry["name"]
            run.outputs.write_layer_attention(name, offset, margin, (0, 0, 0), captured[name])
    run.step_done()
    return {"tile_size": tuple(int(n) for n in x.shape[2:]), "tiles_run": 1}


def _fits_on_gpu(model, extent, device: torch.device) -> bool:
    need = bytes_per_input_voxel(model) * int(np.prod(extent))
    free, _ = torch.cuda.mem_get_info(device)
    return need < 0.8 * free


def _model_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def _run_tiled(run: _Run, image, box, pad_value, budget_gib, tile_size) -> dict:
    """Independent tiles over the box (margin read from real data), as large as the budget allows."""
    size = tuple(b - a for a, b in box)
    plan = make_plan(run.model, size, "tiled", budget_gib, tile_size)
    source = crop_with_margin(image, box, plan.margin, pad_value, plan.covered_shape)
    _run_tiles(run, source, plan, rows=False)
    return {"tile_size": plan.input_tile_size, "tiles_run": run.done}


def _run_reference(run: _Run, image, box) -> dict:
    """The authors' ``segment()``: tiles of 47^3 from the box corner, ceil((max - min) / 47) per
    axis (their off-by-one), zero padding, each row of tiles along the last axis one batch."""
    margin = int(run.model.margin)
    covered = _reference_extent(box)
    if min(covered) < 1:
        return {"tile_size": (REFERENCE_OUTPUT_TILE + 2 * margin,) * 3, "tiles_run": 0}
    plan = plan_tiles(
        covered, margin, REFERENCE_OUTPUT_TILE, int(getattr(run.model, "input_multiple", 1)), even=False
    )
    source = crop_with_margin(
        image, tuple((a, a + c) for (a, _), c in zip(box, covered, strict=True)), margin, 0.0
    )
    _run_tiles(run, source, plan, rows=True)
    return {"tile_size": plan.input_tile_size, "tiles_run": len(plan.tiles)}


def _run_tiles(run: _Run, source: np.ndarray, plan: TilePlan, rows: bool) -> None:
    """Run ``plan``'s tiles over ``source`` (the box with its margin, covering every tile's input)."""
    groups = _rows(plan, run) if rows else [[t] for t in plan.tiles]
    run.begin(len(groups))
    for group in groups:
        run.check_cancel()
        batch = np.stack([source[(slice(None), *plan.input_slices(t))] for t in group])
        x = torch.from_numpy(batch).to(run.device).contiguous(memory_format=run.memory_format)
        with capture_attention(run.model) as captured, run.autocast():
            logits = run.model(x)
        for i, tile in enumerate(group):
            run.outputs.write_logits(tile.start, logits[i : i + 1])
            for geometry in run.model.autofocus_geometry() if run.wanted else []:
                if geometry["name"] in run.wanted:
                    # the layer's grid starts `shift` voxels before the tile's output; keep the tile's part
                    shift = plan.margin - int(geometry["offset"])
                    own = tuple(slice(shift, shift + n) for n in tile.size)
                    a = captured[geometry["name"]][(slice(i, i + 1), slice(None), *own)]
                    run.outputs.write_attention(geometry["name"], tile.start, a)
        run.step_done()


def _rows(plan: TilePlan, run: _Run) -> list[list]:
    """Tiles grouped by row along the last axis, split so one batch fits the memory budget."""
    per_tile = bytes_per_input_voxel(run.model) * int(np.prod(plan.input_tile_size))
    most = max(1, run.budget // max(per_tile, 1))
    rows: dict[tuple[int, int], list] = {}
    for tile in plan.tiles:
        rows.setdefault(tile.start[:2], []).append(tile)
    return [row[i : i + most] for row in rows.values() for i in range(0, len(row), most)]


def _reference_extent(box) -> tuple[int, int, int]:
    """Output extent of the authors' tiles for a box: ceil((max - min) / 47) tiles per axis, with
    max the last voxel (their off-by-one: a box of 48 voxels gets one tile)."""
    return tuple(math.ceil((b - 1 - a) / REFERENCE_OUTPUT_TILE) * REFERENCE_OUTPUT_TILE for a, b in box)


def _reference_cover(box, shape):
    """The part of the image the authors' tiles cover (their outputs beyond it are dropped)."""
    covered = _reference_extent(box)
    return tuple((a, max(a, min(a + c, n))) for (a, _), c, n in zip(box, covered, shape, strict=True))


def crop_with_margin(image: np.ndarray, box, margin: int, pad_value: float, size=None) -> np.ndarray:
    """The box of ``image`` (C, D, H, W) grown by ``margin`` per side (and to ``size`` + margin at
    the end), read from the image where it has data and ``pad_value`` beyond its border."""
    size = size or tuple(b - a for a, b in box)
    out = np.full((image.shape[0], *(n + 2 * margin for n in size)), pad_value, dtype=np.float32)
    src, dst = [], []
    for (a, _), n, extent in zip(box, size, image.shape[1:], strict=True):
        lo, hi = a - margin, a + n + margin
        src.append(slice(max(lo, 0), min(hi, extent)))
        dst.append(slice(max(lo, 0) - lo, min(hi, extent) - lo))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def _region(mask, shape, mode: str, crop: bool, explicit: bool):
    """The box to compute, ((z0, z1), (y0, y1), (x0, x1)); None when an explicit ROI is empty."""
    whole = tuple((0, n) for n in shape)
    if mask is None or (not crop and mode != "reference"):
        return whole
    if not mask.any():
        return None if explicit else whole
    box = []
    for axis in range(3):
        hit = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


@contextlib.contextmanager
def _restore_cudnn_benchmark(value: bool):
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = value


def _given_box(roi, shape) -> tuple | None:
    """A ((z0, z1), (y0, y1), (x0, x1)) ROI clipped to the volume; None when nothing is left."""
    try:
        box = [(int(a), int(b)) for a, b in roi]
    except (TypeError, ValueError):
        raise AutofocusError(
            f"roi must be a boolean mask of shape {tuple(shape)} or ((z0, z1), (y0, y1), (x0, x1))"
        ) from None
    if len(box) != 3:
        raise AutofocusError(f"a bounding box needs 3 (start, stop) pairs, got {len(box)}")
    clipped = tuple((max(a, 0), min(b, n)) for (a, b), n in zip(box, shape, strict=True))
    return None if any(b <= a for a, b in clipped) else clipped


def _roi_mask(roi, shape) -> np.ndarray | None:
    """A (D, H, W) boolean mask from a mask of that shape or a box (see :func:`_given_box`)."""
    if roi is None:
        return None
    if isinstance(roi, np.ndarray) and roi.shape == tuple(shape):
        return roi.astype(bool, copy=False)
    box = _given_box(roi, shape)
    mask = np.zeros(shape, dtype=bool)
    if box is not None:
        mask[tuple(slice(a, b) for a, b in box)] = True
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
