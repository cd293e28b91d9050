"""A comparison of several models on the same image layers: what to run, and running it.

The Compare widget only collects the user's choices and shows the outcome; checking that every
model can read the open layers and running them one after another (in its worker) happen here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from napari_autofocus.analysis.agreement import DiceTable, dice_table, disagreement
from napari_autofocus.app.inputs import LayerInfo, input_problems, match_modalities, modality_names
from napari_autofocus.app.model_library import describe, model_name
from napari_autofocus.app.placement import Placement
from napari_autofocus.app.session import RunRequest, SegmentationResult, run_model
from napari_autofocus.errors import AutofocusError
from napari_autofocus.nets.card import ModelCard


@dataclass(frozen=True)
class PlannedModel:
    path: str
    card: ModelCard
    layers: tuple[str, ...]  # the image layer for each of the model's channels

    @property
    def name(self) -> str:
        return model_name(self.path)


@dataclass
class ComparisonOutcome:
    results: list[SegmentationResult]
    disagreement: np.ndarray  # per voxel: number of distinct labels minus one
    table: DiceTable | None  # None without a ground truth on the results' grid


def plan_comparison(paths: Sequence[str], layers: Sequence[LayerInfo]) -> list[PlannedModel]:
    """Which layers feed each model; raises :class:`AutofocusError` saying what is wrong."""
    if len(paths) < 2:
        raise AutofocusError("Compare needs at least two models: tick them in the list or add files.")
    shapes = {layer.name: tuple(layer.shape) for layer in layers}
    plan = []
    for path in paths:
        card = describe(path)
        mapping = match_modalities(modality_names(card.modalities, card.in_channels), list(layers))
        problems = input_problems(mapping, list(layers))
        if problems:
            raise AutofocusError(f"{model_name(path)}: {' '.join(problems)}")
        plan.append(PlannedModel(str(path), card, tuple(mapping.values())))
    read = {shapes[p.layers[0]] for p in plan}
    if len(read) > 1:
        raise AutofocusError(f"The models would read volumes of different shapes {sorted(read)}.")
    return plan


def run_comparison(
    plan: Sequence[PlannedModel],
    inputs: Mapping[tuple[str, ...], Sequence[np.ndarray]],
    placement: Placement,
    device: str,
    truth: np.ndarray | None,
    progress: Callable[[int, int, str], None] | None = None,
    status: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
) -> ComparisonOutcome:
    """Run every planned model (``inputs``: the arrays of each plan's layers) and score them."""
    results = []
    for planned in plan:
        what = f"Compare: {planned.name}"
        results.append(
            run_model(
                RunRequest(planned.path, device=device),
                inputs[planned.layers],
                input_layers=list(planned.layers),
                placement=placement,
                progress=(lambda d, t, w=what: progress(d, t, w)) if progress is not None else None,
                status=status,
                cancel=cancel,
            )
        )
    table = None
    if truth is not None and truth.shape == results[0].labels.shape:
        table = dice_table({r.name: r.labels for r in results}, {r.name: r.card for r in results}, truth)
    return ComparisonOutcome(results, disagreement([r.labels for r in results]), table)
