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

import torch
import torch.nn.functional as F
from torch import nn

from napari_autofocus.inference.activation_stores import (
    CropStore,
    FileStore,
    MemoryStore,
    format_of,
)
from napari_autofocus.nets.autofocus import AutofocusConv
from napari_autofocus.nets.blocks import per_side_shrink
from napari_autofocus.nets.networks import BasicNet, TrunkNet
from napari_autofocus.nets.slabs import depth_halo_conv, reach

WORKING_SET_BYTES = 384 * 2**20  # target size of one slab's reads, outputs, window and temporaries


@dataclass(frozen=True)
class Read:
    """How a step reads one input: output voxel i sits over input voxel i + shrink (every axis)
    and reads input voxels i + shrink - reach .. i + shrink + reach."""

    source: str  # "input" or an earlier step's name
    shrink: int
    reach: int


@dataclass(frozen=True)
class Slab:
    """Where a step's slab lies: its output planes, and the depth and grid offset of its input."""

    start: int
    stop: int
    depth_in: int
    offset_in: int  # per-side offset of the input's grid on the network input


@dataclass(frozen=True)
class AttentionSlab:
    """Attention computed for a slab: ``data`` (1, K, planes, H, W) starts at plane ``start`` of
    a grid that sits ``offset`` voxels per side into the network input."""

    name: str
    offset: int
    start: int
    data: torch.Tensor


@dataclass(frozen=True)
class Step:
    name: str
    reads: tuple[Read, ...]
    channels: int
    compute: Callable  # (Slab, *input slabs) -> (output slab, [AttentionSlab, ...])
    temporaries: int = 3  # output-sized tensors alive while it runs (slab sizing)
    window: int = 0  # channels of a rolling window with 2 * window_reach halo planes, if any
    window_reach: int = 0
    reads_stores: bool = False  # compute gets the input stores (to read what it needs), not slabs


# -- the steps of our networks --------------------------------------------------------------------


def network_steps(model: nn.Module) -> list[Step] | None:
    """Streaming steps for BASIC, AFN-n and ASPP networks; ``None`` for any other model."""
    if not isinstance(model, TrunkNet) or model.training:
        return None
    head = getattr(model, "head", None)
    if not isinstance(model, BasicNet) and not hasattr(head, "forward_depth_halo"):
        return None
    names = {g["module"]: g["name"] for g in model.autofocus_geometry()}
    steps = _fuse_valid(
        _conv_step("conv1", "input", model.conv1, model.bn1, names.get("conv1")),
        _conv_step("conv2", "conv1", model.conv2, model.bn2, names.get("conv2")),
    )
    previous = "conv2"
    for i in (3, 4, 5):
        name = f"layer{i}"
        steps.append(_ResidualBlockStep.step(name, previous, getattr(model, name), names))
        previous = name
    if isinstance(model, BasicNet):  # the 1^3 classifier reads no neighbours: fused into the last block
        steps[-1] = _then(steps[-1], model.fc, model.num_classes)
    else:
        steps.append(
            Step("head", (Read(previous, 0, head.reach),), model.num_classes, _plain(head.forward_depth_halo))
        )
    return steps


def _plain(compute: Callable) -> Callable:
    """A slab function of the input alone, in the step protocol (no attention)."""
    return lambda slab, *inputs: (compute(*inputs), [])


def _apply_conv(
    conv: nn.Module, norm: nn.Module, x: torch.Tensor, name: str | None, slab_offset: int, start: int
):
    """ReLU(norm(conv(x))) of a slab with its halo, and the attention if ``conv`` is autofocus."""
    if isinstance(conv, AutofocusConv):
        out, a = conv.forward_depth_halo(x)
        return F.relu_(out), [AttentionSlab(name, slab_offset + conv.shrink, start, a)] if name else []
    return F.relu_(depth_halo_conv(conv, x, norm)), []


def _conv_step(name: str, source: str, conv: nn.Module, norm: nn.Module, attention: str | None) -> Step:
    def run(slab: Slab, x):
        return _apply_conv(conv, norm, x, attention, slab.offset_in, slab.start)

    return Step(name, (Read(source, per_side_shrink(conv), reach(conv)),), conv.out_channels, run)


class _ResidualBlockStep:
    """A residual block as one step. Its first conv's output lives only as a rolling window of
    planes (each computed once, never stored whole), so between blocks only block outputs are
    held; the second conv, its batch norm and the cropped (projected) block input give the output.
    """

    def __init__(self, block: nn.Module, names: dict[str, str], prefix: str) -> None:
        self.block = block
        self.first, self.second = block.conv1, block.conv2
        self.s1, self.r1 = per_side_shrink(self.first), reach(self.first)
        self.s2, self.r2 = per_side_shrink(self.second), reach(self.second)
        self.name1, self.name2 = names.get(f"{prefix}.conv1"), names.get(f"{prefix}.conv2")
        self.window: torch.Tensor | None = None
        self.held = (0, 0)  # planes [lo, hi) of the first conv's output at the window's front

    @classmethod
    def step(cls, name: str, source: str, block: nn.Module, names: dict[str, str]) -> Step:
        run = cls(block, names, name)
        read = Read(source, run.s1 + run.s2, run.r1 + run.r2)
        return Step(name, (read,), run.second.out_channels, run, 4, run.first.out_channels, run.r2, True)

    def __call__(self, slab: Slab, x):
        """``x``: the input store; only what this slab needs is read from it."""
        lo, hi = slab.start + self.s2 - self.r2, slab.stop + self.s2 + self.r2
        attentions = self._advance(x, lo, hi, slab)
        h = self.window[:, :, : hi - lo]
        if isinstance(self.second, AutofocusConv):
            out, a = self.second.forward_depth_halo(h)
            if self.name2:
                attentions.append(
                    AttentionSlab(self.name2, slab.offset_in + self.s1 + self.s2, slab.start, a)
                )
        else:
            out = depth_halo_conv(self.second, h, self.block.bn2)
        first = slab.start + self.s1 + self.s2
        residual = x.read(first, first + slab.stop - slab.start)
        if self.block.crop:
            c = self.block.crop
            residual = residual[:, :, :, c:-c, c:-c]
        if self.block.downsample is not None:
            residual = depth_halo_conv(self.block.downsample[0], residual, self.block.downsample[1])
        if slab.stop == slab.depth_in - 2 * (self.s1 + self.s2):  # the last slab: the window is done
            self.window, h = None, None
        return F.relu_(out.add_(residual)), attentions

    def _advance(self, x, lo: int, hi: int, slab: Slab) -> list[AttentionSlab]:
        """Hold planes [lo, hi) of the first conv's output (zeros beyond its extent) at the front
        of the window: keep those already held, compute only the new ones from the store ``x``,
        at most a slab's thickness at a time (so a read never exceeds a slab plus its halo)."""
        if self.window is None or self.window.shape[2] < hi - lo:
            sample = x.read(0, 1)
            plane = (sample.shape[3] - 2 * self.s1, sample.shape[4] - 2 * self.s1)
            window = sample.new_empty((1, self.first.out_channels, hi - lo, *plane))
            self.window, self.held = window.contiguous(memory_format=format_of(sample)), (lo, lo)
            self.chunk = max(1, slab.stop - slab.start)
        window, (held_lo, held_hi) = self.window, self.held
        kept = max(lo, min(hi, held_hi))  # planes [lo, kept) are held already (slabs only move on)
        for plane in range(lo, kept if held_lo != lo else lo):  # forward, one plane at a time: safe
            window[:, :, plane - lo].copy_(window[:, :, plane - held_lo])
        depth = slab.depth_in - 2 * self.s1
        new_lo, new_hi = max(kept, 0), min(hi, depth)
        attentions = []
        if new_hi > new_lo:
            window[:, :, kept - lo : new_lo - lo].zero_()
            window[:, :, new_hi - lo : hi - lo].zero_()
            for a in range(new_lo, new_hi, self.chunk):
                b = min(a + self.chunk, new_hi)
                planes = x.read(a + self.s1 - self.r1, b + self.s1 + self.r1)
                h, more = _apply_conv(self.first, self.block.bn1, planes, self.name1, slab.offset_in, a)
                window[:, :, a - lo : b - lo].copy_(h)
                attentions += more
        else:
            window[:, :, kept - lo : hi - lo].zero_()
        self.held = (lo, hi)
        return attentions


def _fuse_valid(first: Step, second: Step) -> list[Step]:
    """One step for two valid convolutions in a row (no zero padding along depth in either): the
    first is recomputed on a few halo planes, which is cheaper than writing and reading its output.
    """
    (a,), (b,) = first.reads, second.reads
    if not (a.reach == a.shrink and b.reach == b.shrink and b.source == first.name):
        return [first, second]

    def run(slab: Slab, x):
        h, early = first.compute(slab, x)
        out, late = second.compute(slab, h)
        if early or late:
            raise AssertionError("valid convolutions carry no attention")
        return out, []

    return [
        Step(second.name, (Read(a.source, a.shrink + b.shrink, a.reach + b.reach),), second.channels, run)
    ]


def _then(step: Step, classifier: nn.Conv3d, channels: int) -> Step:
    """``step`` followed by a 1^3 convolution, in the same slab."""

    def run(slab: Slab, *inputs):
        out, attentions = step.compute(slab, *inputs)
        return depth_halo_conv(classifier, out), attentions

    # slabs are sized by the step's own (wider) output, which the classifier's small one follows
    temporaries = -(-step.temporaries * step.channels // channels) + 1
    return Step(
        step.name, step.reads, channels, run, temporaries, step.window, step.window_reach, step.reads_stores
    )


# -- where activations live -----------------------------------------------------------------------


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
        # reads inside the volume are views; across its border (or from a file) they are copies,
        # of a slab plus the halo the step reads beyond its window
        in_plane = [4 * channels[r.source] * math.prod(extents[r.source][1:]) for r in step.reads]
        window_plane = 4 * step.window * math.prod(extents[step.reads[0].source][1:])
        per_plane = sum(in_plane) + window_plane + 4 * step.channels * math.prod(out[1:]) * step.temporaries
        halo = window_plane * 2 * step.window_reach
        halo += sum(p * 2 * (r.reach - step.window_reach) for p, r in zip(in_plane, step.reads, strict=True))
        slabs[step.name] = max(1, min(out[0], (working_set - halo) // per_plane))
    return StreamPlan(extents, offsets, slabs, channels)


def peak_activation_bytes(steps: list[Step], plan: StreamPlan, release: bool) -> int:
    """Most bytes of full activations alive at once. With ``release`` an input's planes are freed
    as its last reader passes them while the output fills, so a step holds the larger of its whole
    input (first slab) and its whole output plus the input planes its last slab reads (last slab),
    instead of both."""
    last_use = _last_use(steps)
    alive = {"input": plan.bytes_of("input")}
    peak = 0
    for i, step in enumerate(steps):
        out = plan.bytes_of(step.name) if i < len(steps) - 1 else 0
        freed = [r for r in step.reads if last_use[r.source] == i]
        kept = sum(b for name, b in alive.items() if name not in {r.source for r in freed})
        going = sum(alive[r.source] for r in freed)
        if release:  # linear in the slab position: largest at the first or at the last slab
            depth, thick = plan.extents[step.name][0], plan.slabs[step.name]
            last = (depth - 1) // thick * thick
            ahead = 0
            for r in freed:
                planes = plan.extents[r.source][0]
                ahead += alive[r.source] * min(planes, planes - (last + r.shrink - r.reach)) // planes
            peak = max(peak, kept + max(going, out + ahead))
        else:
            peak = max(peak, kept + going + out)
        for r in freed:
            alive.pop(r.source, None)
        if out:
            alive[step.name] = out
    return peak


def _last_use(steps: list[Step]) -> dict[str, int]:
    last = {"input": 0}
    for i, step in enumerate(steps):
        for r in step.reads:
            last[r.source] = i
    return last


def run_stream(
    steps: list[Step],
    image: torch.Tensor,
    plan: StreamPlan,
    *,
    memory_bytes: int,
    on_output: Callable[[Step, int, torch.Tensor | None, list[AttentionSlab]], None],
    before_slab: Callable[[], None] = lambda: None,
    after_slab: Callable[[], None] = lambda: None,
    compute_context: Callable = contextlib.nullcontext,
    spill_dir: str | Path | None = None,
) -> str:
    """Run ``steps`` over ``image`` (1, C, D, H, W) slab by slab.

    ``on_output(step, start_plane, logits, attentions)`` gets every slab's attention and, for the
    last step, its output. Full activations stay in memory when the most alive at once fits
    ``memory_bytes``, else they all go to temporary files in ``spill_dir``. Returns "memory" or
    "file".
    """
    last_use = _last_use(steps)
    if isinstance(image, CropStore):  # read from the scan itself, slab by slab
        stores = {"input": image}
        device, memory_format = image.device, image.memory_format
    else:
        stores = {"input": MemoryStore(image)}
        device, memory_format = image.device, format_of(image)
    in_memory = peak_activation_bytes(steps, plan, stores["input"].can_release) <= memory_bytes
    with tempfile.TemporaryDirectory(prefix="napari-autofocus-", dir=spill_dir) as folder:
        try:
            for i, step in enumerate(steps):
                final = i == len(steps) - 1
                store = None
                if not final:
                    extent = plan.extents[step.name]
                    store = (
                        MemoryStore.empty(step.channels, extent, device, memory_format)
                        if in_memory
                        else FileStore(folder, step.channels, extent, device)
                    )
                    stores[step.name] = store
                freed = [r for r in step.reads if last_use[r.source] == i]
                depth, thick = plan.extents[step.name][0], plan.slabs[step.name]
                first = step.reads[0]
                for start in range(0, depth, thick):
                    before_slab()
                    stop = min(start + thick, depth)
                    slab = Slab(start, stop, plan.extents[first.source][0], plan.offsets[first.source])
                    inputs = [
                        stores[r.source]
                        if step.reads_stores
                        else stores[r.source].read(start + r.shrink - r.reach, stop + r.shrink + r.reach)
                        for r in step.reads
                    ]
                    with compute_context():
                        out, attentions = step.compute(slab, *inputs)
                    del inputs
                    on_output(step, start, out if final else None, attentions)
                    if store is not None:
                        store.write(start, out)
                    del out, attentions
                    for r in freed:  # planes no later slab of this step reads
                        stores[r.source].release(stop + r.shrink - r.reach)
                    after_slab()
                for r in freed:
                    _release(stores.pop(r.source, None))
        finally:
            for store in stores.values():
                _release(store)
    return "memory" if in_memory else "file"


def _release(store) -> None:
    if isinstance(store, FileStore):
        store.close()
