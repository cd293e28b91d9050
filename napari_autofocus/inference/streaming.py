"""Exact whole-volume inference by per-layer streaming: every layer runs once over the whole volume,
or over the part of it the foreground's outputs depend on.

Why not tiles: autofocus and ASPP branches zero-pad their large dilations, so a tile border acts as
a volume border for them; the attention maps then change at every tile border (seams) and with the
tile size. Here the network is a list of steps, one per convolution (residual additions included).
Each step is computed over the whole cropped volume in slabs along the first axis; a slab's input
carries a halo of the step's own reach, read from the previous step's full output, with zeros only
beyond the volume's border. The result is one forward pass over the whole volume, and no voxel of
any layer is computed twice (tiles recompute their margins).

Within a slab, each layer computes only the in-plane box of voxels that some output in the
foreground's box of its plane depends on (``regions.PlaneBoxes``): the foreground dilated by the
reach of the layers after it. Such a box reads its in-plane halo too (zeros only beyond the
volume's border, exactly where the whole-volume layer pads) and pads nothing; a box that would
cover most of the plane is computed as whole planes, which pad in-plane themselves and read
their input without copying it. Voxels outside a layer's boxes are never computed, and no
needed voxel reads them.

Between steps only full activations are held: in memory while they fit the memory budget, else in
a temporary file read back slab by slab, so a small budget works for any volume.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from napari_autofocus.inference.activation_stores import (
    CropStore,
    FileStore,
    MemoryStore,
    format_of,
    in_plane,
)
from napari_autofocus.inference.regions import PlaneBoxes
from napari_autofocus.nets.autofocus import AutofocusConv
from napari_autofocus.nets.blocks import per_side_shrink
from napari_autofocus.nets.slabs import halo_conv, reach

WORKING_SET_BYTES = 384 * 2**20  # target size of one slab's reads, outputs, window and temporaries
BOX_MOST_OF_PLANE = 0.7  # a slab computes whole planes where its box would cover more of them


@dataclass(frozen=True)
class Read:
    """How a step reads one input: output voxel i sits over input voxel i + shrink (every axis)
    and reads input voxels i + shrink - reach .. i + shrink + reach."""

    source: str  # "input" or an earlier step's name
    shrink: int
    reach: int


def _no_count(module: nn.Module, out: torch.Tensor) -> None:
    """The default FLOP tally: none."""


@dataclass(frozen=True)
class Slab:
    """Where a step's slab lies: its output planes and in-plane box, the depth and grid offset of
    its input, and how to ask which voxels of an intermediate grid outputs depend on."""

    start: int
    stop: int
    depth_in: int
    offset_in: int  # per-side offset of the input's grid on the network input
    rows: tuple[int, int] = (0, 0)  # the output's in-plane box on the step's grid
    cols: tuple[int, int] = (0, 0)
    reach_after: int = 0  # how far from the step's voxels the outputs depending on them lie
    needs: Callable | None = None  # (grid offset, reach after, start, stop, plane) -> box or None
    count: Callable = _no_count  # (module, output) -> None: tallies the FLOPs computed
    boxed: bool = False  # part of each plane: inputs carry an in-plane halo (else whole planes)

    @property
    def corner(self) -> tuple[int, int, int]:
        return self.start, self.rows[0], self.cols[0]


@dataclass(frozen=True)
class AttentionSlab:
    """Attention computed for a box: ``data`` (1, K, planes, rows, cols) starts at voxel ``start``
    (z, y, x) of a grid that sits ``offset`` voxels per side into the network input."""

    name: str
    offset: int
    start: tuple[int, int, int]
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
    close: Callable | None = None  # frees what the step keeps between its slabs


# -- the steps of our networks --------------------------------------------------------------------


def network_steps(model: nn.Module) -> list[Step] | None:
    """Streaming steps for a network that describes its parts (``model.stream_layout()``, see
    :class:`~napari_autofocus.nets.networks.StreamLayout`); ``None`` for any other model."""
    describe = getattr(model, "stream_layout", None)
    layout = describe() if callable(describe) and not model.training else None
    if layout is None or (layout.classifier is None) == (layout.head is None):
        return None
    names = {g["module"]: g["name"] for g in model.autofocus_geometry()}
    steps, previous = [], "input"
    for name, conv, norm in layout.stem:
        steps.append(_conv_step(name, previous, conv, norm, names.get(name)))
        previous = name
    steps = _fuse_valid(*steps) if len(steps) == 2 else steps
    for name, block in layout.blocks:
        steps.append(_ResidualBlockStep.step(name, previous, block, names))
        previous = name
    if layout.classifier is not None:  # a 1^3 classifier reads no neighbours: fused into the last block
        steps[-1] = _then(steps[-1], layout.classifier, model.num_classes)
    else:
        head = layout.head
        steps.append(Step("head", (Read(previous, 0, head.reach),), model.num_classes, _head(head)))
    return steps


def _head(head: nn.Module) -> Callable:
    """The head's logits of a slab (no attention), in the step protocol."""

    def run(slab: Slab, x):
        out = head.forward_halo(x, slab.boxed)
        slab.count(head, out)
        return out, []

    return run


def _apply_conv(
    conv: nn.Module, norm: nn.Module, x: torch.Tensor, name: str | None, offset: int, start, slab
):
    """ReLU(norm(conv(x))) of a slab with its halo, and the attention if ``conv`` is autofocus
    (``offset``: of the input's grid; ``start``: the slab's first output voxel on the conv's;
    ``slab``: whether the input is boxed, and the FLOP tally)."""
    if isinstance(conv, AutofocusConv):
        out, a = conv.forward_halo(x, slab.boxed)
        slab.count(conv, out)
        return F.relu_(out), [AttentionSlab(name, offset + conv.shrink, start, a)] if name else []
    out = halo_conv(conv, x, norm, slab.boxed)
    slab.count(conv, out)
    return F.relu_(out), []


def _conv_step(name: str, source: str, conv: nn.Module, norm: nn.Module, attention: str | None) -> Step:
    def run(slab: Slab, x):
        return _apply_conv(conv, norm, x, attention, slab.offset_in, slab.corner, slab)

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
        return Step(
            name, (read,), run.second.out_channels, run, 4, run.first.out_channels, run.r2, True, run.close
        )

    def close(self) -> None:
        self.window = None

    def __call__(self, slab: Slab, x):
        """``x``: the input store; only what this slab's box needs is read from it."""
        lo, hi = slab.start + self.s2 - self.r2, slab.stop + self.s2 + self.r2
        attentions = self._advance(x, lo, hi, slab)
        h = self.window[:, :, : hi - lo]
        if slab.boxed:
            grow = self.s2 - self.r2, self.s2 + self.r2
            rows, cols = (
                (slab.rows[0] + grow[0], slab.rows[1] + grow[1]),
                (slab.cols[0] + grow[0], slab.cols[1] + grow[1]),
            )
            h = in_plane(h, rows, cols)
        if isinstance(self.second, AutofocusConv):
            out, a = self.second.forward_halo(h, slab.boxed)
            if self.name2:
                attentions.append(
                    AttentionSlab(self.name2, slab.offset_in + self.s1 + self.s2, slab.corner, a)
                )
        else:
            out = halo_conv(self.second, h, self.block.bn2, slab.boxed)
        slab.count(self.second, out)
        shift = self.s1 + self.s2  # the block input, centre-cropped to the output
        residual = in_plane(
            x.read(slab.start + shift, slab.stop + shift),
            (slab.rows[0] + shift, slab.rows[1] + shift),
            (slab.cols[0] + shift, slab.cols[1] + shift),
        )
        if self.block.downsample is not None:
            residual = halo_conv(self.block.downsample[0], residual, self.block.downsample[1])
            slab.count(self.block.downsample[0], residual)
        return F.relu_(out.add_(residual)), attentions

    def _advance(self, x, lo: int, hi: int, slab: Slab) -> list[AttentionSlab]:
        """Hold planes [lo, hi) of the first conv's output (zeros beyond its extent) at the front
        of the window: keep those already held, compute only the new ones from the store ``x``,
        at most a slab's thickness at a time (so a read never exceeds a slab plus its halo), and
        of those only the in-plane box later outputs depend on."""
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
                box = slab.needs(slab.offset_in + self.s1, slab.reach_after + self.r2, a, b, window.shape[3:])
                if box is None:  # no output depends on these planes
                    continue
                (y0, y1), (x0, x1) = box
                grow = self.s1 - self.r1, self.s1 + self.r1
                planes = x.read(a + grow[0], b + grow[1])
                part = replace(slab, boxed=box != ((0, window.shape[3]), (0, window.shape[4])))
                if part.boxed:
                    planes = in_plane(planes, (y0 + grow[0], y1 + grow[1]), (x0 + grow[0], x1 + grow[1]))
                h, more = _apply_conv(
                    self.first, self.block.bn1, planes, self.name1, slab.offset_in, (a, y0, x0), part
                )
                window[:, :, a - lo : b - lo, y0:y1, x0:x1].copy_(h)
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
        logits = halo_conv(classifier, out)
        slab.count(classifier, logits)
        return logits, attentions

    # slabs are sized by the step's own (wider) output, which the classifier's small one follows
    temporaries = -(-step.temporaries * step.channels // channels) + 1
    return Step(
        step.name,
        step.reads,
        channels,
        run,
        temporaries,
        step.window,
        step.window_reach,
        step.reads_stores,
        step.close,
    )


# -- where activations live -----------------------------------------------------------------------


@dataclass
class StreamPlan:
    """Extents, offsets and slab thickness of every step for one input extent."""

    extents: dict[str, tuple[int, int, int]]
    offsets: dict[str, int]  # per-side offset of each step's grid on the input grid
    slabs: dict[str, int]  # planes per slab
    channels: dict[str, int]
    reach_after: dict[str, int]  # how far from each step's voxels the outputs depending on them lie

    @property
    def total_slabs(self) -> int:
        return sum(math.ceil(self.extents[n][0] / s) for n, s in self.slabs.items())

    def bytes_of(self, name: str) -> int:
        return 4 * self.channels[name] * math.prod(self.extents[name])


def plan_stream(
    steps: list[Step], in_channels: int, extent, working_set: int = WORKING_SET_BYTES
) -> StreamPlan:
    """Sizes of every activation; slabs as thick as ``working_set`` allows (at least one plane).
    (Thinner slabs would follow the foreground's outline closer, but oneDNN runs a slab of a few
    planes several times slower per voxel than a thick one: a 16->16 3^3 conv on 12 planes of
    104x92 took 60 ms, on 100 planes 50 ms.)"""
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
    reach_after = {steps[-1].name: 0}
    for step in reversed(steps):  # every reader of a step comes after it
        for r in step.reads:
            reach_after[r.source] = max(reach_after.get(r.source, 0), reach_after[step.name] + r.reach)
    return StreamPlan(extents, offsets, slabs, channels, reach_after)


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
    on_output: Callable[[Step, tuple[int, int, int], torch.Tensor | None, list[AttentionSlab]], None],
    before_slab: Callable[[], None] = lambda: None,
    after_slab: Callable[[], None] = lambda: None,
    compute_context: Callable = contextlib.nullcontext,
    spill_dir: str | Path | None = None,
    planes: PlaneBoxes | None = None,
    count: Callable = _no_count,
) -> str:
    """Run ``steps`` over ``image`` (1, C, D, H, W) slab by slab.

    ``planes``: the outputs wanted, per plane of the output grid (default: all); every layer
    computes only the in-plane box of each slab they depend on, and slabs none depends on are
    skipped. ``on_output(step, corner, logits, attentions)`` gets every slab's attention and, for
    the last step, its output box, whose first voxel is ``corner`` (z, y, x) of the output grid.
    ``count(module, output)`` is told of every convolution run. Full activations stay in memory
    when the most alive at once fits ``memory_bytes``, else they all go to temporary files in
    ``spill_dir``. Returns "memory" or "file".
    """
    last_use = _last_use(steps)
    if isinstance(image, CropStore):  # read from the scan itself, slab by slab
        stores = {"input": image}
        device, memory_format = image.device, image.memory_format
    else:
        stores = {"input": MemoryStore(image)}
        device, memory_format = image.device, format_of(image)
    in_memory = peak_activation_bytes(steps, plan, stores["input"].can_release) <= memory_bytes
    final_offset = plan.offsets[steps[-1].name]
    wanted = planes or PlaneBoxes.full(plan.extents[steps[-1].name])

    def needs(offset: int, reach_after: int, start: int, stop: int, plane):
        """The in-plane box of the planes [start, stop) of a grid that outputs depend on: None,
        a box, or whole planes where a box would save little (a box's reads are copies)."""
        box = wanted.needed(final_offset - offset, reach_after, start, stop, plane)
        if box is None:
            return None
        (y0, y1), (x0, x1) = box
        if (y1 - y0) * (x1 - x0) > BOX_MOST_OF_PLANE * plane[0] * plane[1]:
            return (0, int(plane[0])), (0, int(plane[1]))
        return box

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
                    reach_after = plan.reach_after[step.name]
                    box = needs(
                        plan.offsets[step.name], reach_after, start, stop, plan.extents[step.name][1:]
                    )
                    if box is not None:  # else no output depends on these planes
                        rows, cols = box
                        slab = Slab(
                            start,
                            stop,
                            plan.extents[first.source][0],
                            plan.offsets[first.source],
                            rows,
                            cols,
                            reach_after,
                            needs,
                            count,
                            boxed=box != ((0, plan.extents[step.name][1]), (0, plan.extents[step.name][2])),
                        )
                        inputs = [
                            stores[r.source] if step.reads_stores else _read(stores[r.source], slab, r)
                            for r in step.reads
                        ]
                        with compute_context():
                            out, attentions = step.compute(slab, *inputs)
                        del inputs
                        on_output(step, slab.corner, out if final else None, attentions)
                        if store is not None:
                            store.write(start, out, rows, cols)
                        del out, attentions
                    for r in freed:  # planes no later slab of this step reads
                        stores[r.source].release(stop + r.shrink - r.reach)
                    after_slab()
                if step.close is not None:
                    step.close()
                for r in freed:
                    _release(stores.pop(r.source, None))
        finally:
            for store in stores.values():
                _release(store)
    return "memory" if in_memory else "file"


def _read(store, slab: Slab, read: Read) -> torch.Tensor:
    """What a slab reads of one input: its planes grown by the read's reach, whole, or for a box
    the box grown by the reach in-plane too (zeros beyond the input's border)."""
    lo, hi = read.shrink - read.reach, read.shrink + read.reach
    planes = store.read(slab.start + lo, slab.stop + hi)
    if not slab.boxed:
        return planes
    return in_plane(planes, (slab.rows[0] + lo, slab.rows[1] + hi), (slab.cols[0] + lo, slab.cols[1] + hi))


def _release(store) -> None:
    if isinstance(store, FileStore):
        store.close()
