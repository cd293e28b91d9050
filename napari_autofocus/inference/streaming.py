"""Exact whole-volume inference by per-layer streaming: every layer runs once over the whole volume.

Why not tiles: autofocus and ASPP branches zero-pad their large dilations, so a tile border acts as
a volume border for them; the attention maps then change at every tile border (seams) and with the
tile size. Here the network is a list of steps, one per convolution (residual additions included).
Each step is computed over the whole cropped volume in slabs along the first axis; a slab's input
carries a halo of the step's own reach, read from the previous step's full output, with zeros only
beyond the volume's border. The result is one forward pass over the whole volume, and no voxel of
any layer is computed twice (tiles recompute their margins).

Between steps only full activations are held: in memory while they fit the memory budget, else in
a temporary file read back slab by slab, so a small budget works for any volume.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from napari_autofocus.nets.autofocus import AutofocusConv
from napari_autofocus.nets.networks import BasicNet, TrunkNet
from napari_autofocus.nets.slabs import depth_halo_conv, reach

WORKING_SET_BYTES = 256 * 2**20  # target size of one slab's inputs, outputs and temporaries


@dataclass(frozen=True)
class Read:
    """How a step reads one input: output voxel i sits over input voxel i + shrink (every axis)
    and reads input voxels i + shrink - reach .. i + shrink + reach."""

    source: str  # "input" or an earlier step's name
    shrink: int
    reach: int


@dataclass(frozen=True)
class Step:
    name: str
    reads: tuple[Read, ...]
    channels: int
    compute: Callable  # (*input slabs) -> output slab, or (output, attention) if `attention` is set
    attention: str | None = None  # "AF1".. for an autofocus conv whose attention is wanted
    temporaries: int = 3  # output-sized tensors alive while it runs (slab sizing)


# -- the steps of our networks --------------------------------------------------------------------


def network_steps(model: nn.Module) -> list[Step] | None:
    """Streaming steps for BASIC, AFN-n and ASPP networks; ``None`` for any other model."""
    if not isinstance(model, TrunkNet) or model.training:
        return None
    head = getattr(model, "head", None)
    if not isinstance(model, BasicNet) and not hasattr(head, "forward_depth_halo"):
        return None
    names = {g["module"]: g["name"] for g in model.autofocus_geometry()}
    steps = [
        _conv_step("conv1", "input", model.conv1, model.bn1, names.get("conv1")),
        _conv_step("conv2", "conv1", model.conv2, model.bn2, names.get("conv2")),
    ]
    previous = "conv2"
    for i in (3, 4, 5):
        name = f"layer{i}"
        block = getattr(model, name)
        steps.append(
            _conv_step(f"{name}.conv1", previous, block.conv1, block.bn1, names.get(f"{name}.conv1"))
        )
        steps.append(_block_output_step(name, previous, block, names.get(f"{name}.conv2")))
        previous = name
    if isinstance(model, BasicNet):  # the 1^3 classifier reads no neighbours: fused into the last block
        steps[-1] = _then(steps[-1], model.fc, model.num_classes)
    else:
        steps.append(
            Step("head", (Read(previous, 0, head.reach),), model.num_classes, head.forward_depth_halo)
        )
    return steps


def _relu_output(compute: Callable) -> Callable:
    def run(*slabs):
        out, attention = compute(*slabs)
        return F.relu_(out), attention

    return run


def _conv_step(name: str, source: str, conv: nn.Module, norm: nn.Module, attention: str | None) -> Step:
    read = (Read(source, _shrink(conv), reach(conv)),)
    if isinstance(conv, AutofocusConv):
        return Step(name, read, conv.out_channels, _relu_output(conv.forward_depth_halo), attention)
    return Step(name, read, conv.out_channels, lambda x: F.relu_(depth_halo_conv(conv, x, norm)))


def _block_output_step(name: str, source: str, block: nn.Module, attention: str | None) -> Step:
    """conv2 + BN of a residual block, plus the cropped (projected) block input, then ReLU."""
    conv, crop = block.conv2, block.crop
    autofocus = isinstance(conv, AutofocusConv)

    def run(h, x):
        out, a = conv.forward_depth_halo(h) if autofocus else (depth_halo_conv(conv, h, block.bn2), None)
        residual = x[:, :, :, crop:-crop, crop:-crop] if crop else x
        if block.downsample is not None:
            residual = depth_halo_conv(block.downsample[0], residual, block.downsample[1])
        out = F.relu_(out.add_(residual))
        return (out, a) if autofocus else out

    reads = (Read(f"{name}.conv1", _shrink(conv), reach(conv)), Read(source, crop, 0))
    return Step(name, reads, conv.out_channels, run, attention if autofocus else None)


def _then(step: Step, classifier: nn.Conv3d, channels: int) -> Step:
    """``step`` followed by a 1^3 convolution, in the same slab."""

    def run(*slabs):
        out = step.compute(*slabs)
        if step.attention is not None:
            out, a = out
            return depth_halo_conv(classifier, out), a
        return depth_halo_conv(classifier, out)

    return Step(step.name, step.reads, channels, run, step.attention, step.temporaries + 1)


def _shrink(conv: nn.Module) -> int:
    if isinstance(conv, AutofocusConv):
        return conv.shrink
    return reach(conv) - conv.padding[0]


# -- where activations live -----------------------------------------------------------------------


class _MemoryStore:
    """A full activation (1, C, D, H, W) held as one tensor on the compute device."""

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data

    @classmethod
    def empty(cls, channels, extent, device, memory_format) -> _MemoryStore:
        return cls(torch.empty((1, channels, *extent), device=device, memory_format=memory_format))

    def write(self, start: int, slab: torch.Tensor) -> None:
        self.data[:, :, start : start + slab.shape[2]].copy_(slab)

    def read(self, lo: int, hi: int) -> torch.Tensor:
        depth = self.data.shape[2]
        if lo >= 0 and hi <= depth:
            return self.data[:, :, lo:hi]
        out = self.data.new_zeros((*self.data.shape[:2], hi - lo, *self.data.shape[3:]))
        out = out.contiguous(memory_format=_format_of(self.data))
        a, b = max(lo, 0), min(hi, depth)
        if b > a:
            out[:, :, a - lo : b - lo].copy_(self.data[:, :, a:b])
        return out


class _FileStore:
    """A full activation kept plane by plane (D, H, W, C float32) in a temporary file."""

    def __init__(self, folder: str, channels: int, extent, device) -> None:
        self.shape = (extent[0], extent[1], extent[2], channels)
        self.plane = extent[1] * extent[2] * channels
        self.device = device
        self.file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 - closed by release()

    def write(self, start: int, slab: torch.Tensor) -> None:
        planes = slab[0].permute(1, 2, 3, 0).float().contiguous().cpu().numpy()
        self.file.seek(start * self.plane * 4)
        self.file.write(memoryview(planes).cast("B"))

    def read(self, lo: int, hi: int) -> torch.Tensor:
        buffer = np.zeros((hi - lo, *self.shape[1:]), np.float32)
        a, b = max(lo, 0), min(hi, self.shape[0])
        if b > a:
            self.file.seek(a * self.plane * 4)
            self.file.readinto(memoryview(buffer[a - lo : b - lo]).cast("B"))
        return torch.from_numpy(buffer).permute(3, 0, 1, 2)[None].to(self.device)

    def close(self) -> None:
        self.file.close()


def _format_of(t: torch.Tensor):
    return (
        torch.channels_last_3d
        if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d)
        else (torch.contiguous_format)
    )


# -- running the steps ----------------------------------------------------------------------------


@dataclass
class StreamPlan:
    """Extents, offsets and slab thickness of every step for one input extent."""

    extents: dict[str, tuple[int, int, int]]
    offsets: dict[str, int]  # per-side offset of each step's grid on the input grid
    slabs: dict[str, int]  # planes per slab
    channels: dict[str, int]

    @property
    def total_slabs(self) -> int:
        return sum(math.ceil(self.extents[n][0] / s) for n, s in self.slabs.items())

    def bytes_of(self, name: str) -> int:
        return 4 * self.channels[name] * math.prod(self.extents[name])


def plan_stream(
    steps: list[Step], in_channels: int, extent, working_set: int = WORKING_SET_BYTES
) -> StreamPlan:
    """Sizes of every activation; slabs as thick as ``working_set`` allows (at least one plane)."""
    extents, offsets, slabs = {"input": tuple(extent)}, {"input": 0}, {}
    channels = {"input": in_channels}
    for step in steps:
        sizes = {tuple(n - 2 * r.shrink for n in extents[r.source]) for r in step.reads}
        if len(sizes) != 1:
            raise ValueError(f"step {step.name}: its inputs disagree on the output size {sorted(sizes)}")
        out = sizes.pop()
        if min(out) < 1:
            raise ValueError(f"the volume is too small for {step.name}: output {out}")
        extents[step.name] = out
        offsets[step.name] = offsets[step.reads[0].source] + step.reads[0].shrink
        channels[step.name] = step.channels
        read_plane = sum(4 * channels[r.source] * math.prod(extents[r.source][1:]) for r in step.reads)
        halo = sum(
            4 * channels[r.source] * math.prod(extents[r.source][1:]) * 2 * r.reach for r in step.reads
        )
        out_plane = 4 * step.channels * math.prod(out[1:]) * step.temporaries
        slabs[step.name] = max(1, min(out[0], (working_set - halo) // (read_plane + out_plane)))
    return StreamPlan(extents, offsets, slabs, channels)


def run_stream(
    steps: list[Step],
    image: torch.Tensor,
    plan: StreamPlan,
    *,
    memory_bytes: int,
    on_output: Callable[[Step, int, object], None],
    before_slab: Callable[[], None] = lambda: None,
    after_slab: Callable[[], None] = lambda: None,
    compute_context: Callable = contextlib.nullcontext,
    spill_dir: str | Path | None = None,
) -> dict[str, str]:
    """Run ``steps`` over ``image`` (1, C, D, H, W) slab by slab.

    ``on_output(step, start_plane, output)`` gets every slab of the last step and, for steps with
    ``attention``, the (output, attention) pair of every slab. Full activations stay in memory
    while those alive together fit ``memory_bytes``, otherwise they go to a temporary file in
    ``spill_dir``. Returns where each activation was kept ("memory" or "file").
    """
    last_use = {"input": 0}
    for i, step in enumerate(steps):
        for r in step.reads:
            last_use[r.source] = i
    stores = {"input": _MemoryStore(image)}
    held = {"input": plan.bytes_of("input")}
    placement = {}
    device, memory_format = image.device, _format_of(image)
    with tempfile.TemporaryDirectory(prefix="napari-autofocus-", dir=spill_dir) as folder:
        try:
            for i, step in enumerate(steps):
                final = i == len(steps) - 1
                store = None
                if not final:
                    size = plan.bytes_of(step.name)
                    if sum(held.values()) + size <= memory_bytes:
                        store = _MemoryStore.empty(
                            step.channels, plan.extents[step.name], device, memory_format
                        )
                        held[step.name] = size
                        placement[step.name] = "memory"
                    else:
                        store = _FileStore(folder, step.channels, plan.extents[step.name], device)
                        placement[step.name] = "file"
                    stores[step.name] = store
                depth, thick = plan.extents[step.name][0], plan.slabs[step.name]
                for start in range(0, depth, thick):
                    before_slab()
                    stop = min(start + thick, depth)
                    inputs = [
                        stores[r.source].read(start + r.shrink - r.reach, stop + r.shrink + r.reach)
                        for r in step.reads
                    ]
                    with compute_context():
                        result = step.compute(*inputs)
                    del inputs
                    if step.attention is not None or final:
                        on_output(step, start, result)
                    if store is not None:
                        store.write(start, result[0] if isinstance(result, tuple) else result)
                    del result
                    after_slab()
                for source, last in list(last_use.items()):
                    if last == i and source in stores:
                        _release(stores.pop(source))
                        held.pop(source, None)
        finally:
            for store in stores.values():
                _release(store)
    return placement


def _release(store) -> None:
    if isinstance(store, _FileStore):
        store.close()
