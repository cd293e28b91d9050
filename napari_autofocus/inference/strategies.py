"""How the engine runs a network over a box: the run's shared state (progress, Cancel, outputs) and
its strategies: per-layer streaming or one pass (exact), independent tiles, or the authors' tiling.
:func:`napari_autofocus.inference.engine.predict_volume` picks one and places the outputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.activation_stores import own_strides
from napari_autofocus.inference.outputs import Outputs
from napari_autofocus.inference.regions import crop_with_margin
from napari_autofocus.inference.tiling import TilePlan, plan_tiles
from napari_autofocus.nets import AutofocusConv, capture_attention
from napari_autofocus.nets.slabs import conv_flops

REFERENCE_OUTPUT_TILE = 47  # the reference: 75^3 input tiles, 47^3 output, stride 47
DEFAULT_MEMORY_BUDGET_GIB = 2.0  # peak memory of the process while it predicts
MIN_TILE_OUTPUT = 8  # tiles never shrink below this output edge, whatever the budget
MODE_ALIASES = {"fast": "tiled", "exact": "whole"}  # earlier names


class Cancelled(AutofocusError):
    """The run was cancelled; no output was produced."""


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


def make_plan(
    model: nn.Module,
    shape: Sequence[int],
    mode: str = "tiled",
    memory_budget_gib: float = DEFAULT_MEMORY_BUDGET_GIB,
    tile_size: int | None = None,
) -> TilePlan:
    """The tiles ``predict_volume`` will run for a volume of ``shape`` (D, H, W)."""
    margin, multiple = int(model.margin), int(getattr(model, "input_multiple", 1))
    mode = MODE_ALIASES.get(mode, mode)
    if mode == "reference":
        return plan_tiles(tuple(shape), margin, tile_size or REFERENCE_OUTPUT_TILE, multiple, even=False)
    if mode != "tiled":
        raise AutofocusError(f"make_plan is for tiled modes; got {mode!r}, expected 'tiled' or 'reference'")
    cap = tile_size or tile_cap_for_budget(model, memory_budget_gib)
    return plan_tiles(tuple(shape), margin, cap, multiple, even=True)


@dataclass
class EngineRun:
    """One run of the engine as its strategies share it: the model, where and how it computes, the
    outputs being filled, the budget and the progress/cancel hooks (built by ``predict_volume``)."""

    model: nn.Module
    device: torch.device
    memory_format: torch.memory_format
    precision: str  # "fp32" or "bf16" (autocast)
    wanted: list[str]
    outputs: Outputs
    budget: int
    in_use: int
    progress: Callable[[int, int], None] | None
    cancel: object
    done: int = 0
    total: int = 0
    flops: float = 0.0  # what streamed runs computed (multiply-adds x 2)

    def count(self, module: nn.Module, out: torch.Tensor) -> None:
        self.flops += conv_flops(module) * out[0, 0].numel()

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

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
        return (
            torch.from_numpy(own_strides(array))[None]
            .to(self.device)
            .contiguous(memory_format=self.memory_format)
        )


def run_whole(run: EngineRun, image, box, pad_value, one_pass, spill_dir, tile_size) -> tuple[str, dict]:
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
        return "tiled", run_tiled(run, image, box, pad_value, run.budget / 2**30, tile_size)
    extent = tuple(b - a + 2 * margin for a, b in box)
    if one_pass is None:
        one_pass = run.device.type == "cuda" and _fits_on_gpu(model, extent, run.device)
    if one_pass:
        return "whole", _run_one_pass(run, crop_with_margin(image, box, margin, pad_value))
    working_set = min(WORKING_SET_BYTES, run.budget // 4)
    plan = plan_stream(steps, image.shape[0], extent, working_set)
    run.begin(plan.total_slabs)
    outputs = run.outputs

    def on_output(step, corner, logits, attentions):
        for a in attentions:
            if a.name in outputs.maps:
                outputs.write_layer_attention(a.name, a.offset, margin, a.start, a.data)
        if logits is not None:
            outputs.write_logits(corner, logits)

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
        planes=outputs.planes,
        count=run.count,
    )
    return "whole", {
        "tile_size": extent,
        "slabs_run": run.done,
        "activations": placement,
        "flops": run.flops,
    }


def _run_one_pass(run: EngineRun, source: np.ndarray) -> dict:
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


def run_tiled(run: EngineRun, image, box, pad_value, budget_gib, tile_size) -> dict:
    """Independent tiles over the box (margin read from real data), as large as the budget allows."""
    size = tuple(b - a for a, b in box)
    plan = make_plan(run.model, size, "tiled", budget_gib, tile_size)
    source = crop_with_margin(image, box, plan.margin, pad_value, plan.covered_shape)
    _run_tiles(run, source, plan, rows=False)
    return {"tile_size": plan.input_tile_size, "tiles_run": run.done}


def run_reference(run: EngineRun, image, box) -> dict:
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


def _run_tiles(run: EngineRun, source: np.ndarray, plan: TilePlan, rows: bool) -> None:
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


def _rows(plan: TilePlan, run: EngineRun) -> list[list]:
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


def reference_cover(box, shape):
    """The part of the image the authors' tiles cover (their outputs beyond it are dropped)."""
    covered = _reference_extent(box)
    return tuple((a, max(a, min(a + c, n))) for (a, _), c, n in zip(box, covered, shape, strict=True))
