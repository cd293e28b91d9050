"""One segmentation run and its result: what the widgets hand to the worker and get back.

:class:`SegmentationResult` keeps everything the explorer, the counterfactual view and the export
need (labels, probabilities, every autofocus layer's attention, the rates, geometry, provenance and
the loaded model), so looking at attention never re-runs the network. :func:`run_model` is the
worker's body: it loads the model (torch is imported here, not before) and runs the predictor every
caller uses (:mod:`napari_autofocus.inference.predictor`: the card's normalisation and spacing,
outputs back on the layers' grid, warnings when the scan does not match the model). No Qt.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_autofocus.app.model_library import is_reference_checkpoint, model_name
from napari_autofocus.app.placement import Placement
from napari_autofocus.errors import AutofocusError
from napari_autofocus.io.nifti import NiftiGeometry
from napari_autofocus.nets.card import ModelCard

RESULT_KEY = "autofocus_result"  # layer.metadata key of the labels layer that owns a result


@dataclass
class RunRequest:
    """What to run: a model file, where, and which outputs."""

    model_path: str
    arch: str = "auto"
    device: str = "auto"
    probabilities: bool = False
    override: tuple[str, object] | None = None  # (autofocus layer name, attention_override value)
    crop: bool = True  # compute only the foreground's bounding box (non-zero in any channel)

    @property
    def model_name(self) -> str:
        return model_name(self.model_path)


@dataclass
class SegmentationResult:
    """A model's output on one volume, aligned with the input layers' grid: the engine's
    :class:`~napari_autofocus.inference.Prediction` (held, not copied) and what the viewer needs
    around it (the request, the layers it read and where they sit, the loaded model)."""

    request: RunRequest
    card: ModelCard
    prediction: object = field(repr=False)  # the Prediction on the layers' grid (attention included)
    receptive_field_min: int
    input_layers: list[str]
    inputs: list[np.ndarray]  # the raw layer arrays (references, not copies) for re-runs
    placement: Placement  # where the input layers (and so every output layer) sit
    network_spacing: tuple[float, ...] | None = None  # voxel size the network computed on (mm)
    preprocessing: dict = field(default_factory=dict)  # the predictor's report, warnings included
    created: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    model: object = field(default=None, repr=False)  # the loaded torch module, reused by re-runs
    id: str = field(default_factory=lambda: uuid.uuid4().hex)  # stable for the result's life (never id())

    def __post_init__(self) -> None:
        if self.network_spacing is None:
            self.network_spacing = tuple(self.placement.spacing)

    # the prediction's parts, as the widgets read them
    @property
    def labels(self) -> np.ndarray:
        return self.prediction.labels

    @property
    def probabilities(self) -> np.ndarray | None:
        return self.prediction.probabilities

    @property
    def attention(self) -> dict[str, np.ndarray]:
        return self.prediction.attention

    @property
    def rates(self) -> dict[str, tuple[int, ...]]:
        return self.prediction.rates

    @property
    def device(self) -> str:
        return self.prediction.device

    @property
    def seconds(self) -> float:
        return self.prediction.seconds

    @property
    def crop_box(self) -> tuple | None:
        """((z0, z1), (y0, y1), (x0, x1)) the network computed; NaN attention outside."""
        return self.prediction.crop_box

    @property
    def mode(self) -> str:
        return self.prediction.mode

    # the placement's parts, as the writers and provenance read them
    @property
    def scale(self) -> tuple[float, ...]:
        return self.placement.scale

    @property
    def translate(self) -> tuple[float, ...]:
        return self.placement.translate

    @property
    def geometry(self) -> NiftiGeometry | None:
        return self.placement.geometry

    @property
    def affine(self) -> np.ndarray | None:
        return self.placement.affine

    @property
    def name(self) -> str:
        return self.request.model_name

    @functools.cached_property
    def foreground(self) -> np.ndarray:
        """Voxels non-zero in any input channel: what crop-to-foreground computes, and where the
        explorer draws attention (air inside the computed box stays transparent)."""
        shape = self.labels.shape
        inputs = [np.asarray(x) for x in self.inputs if np.shape(x) == shape]
        if not inputs:  # inputs on another grid (never from Segment): every voxel counts
            return np.ones(shape, dtype=bool)
        mask = inputs[0] != 0
        for x in inputs[1:]:
            mask |= x != 0
        return mask

    @property
    def empty(self) -> bool:
        """Whether the model labelled every voxel background (worth saying: it is not a bug)."""
        return not self.labels.any()

    @property
    def warnings(self) -> list[str]:
        """How the scan does not match the model (the predictor's checks); empty when it matches."""
        return list(self.preprocessing.get("warnings", []))

    def class_name(self, value: int) -> str:
        return self.card.class_names.get(str(value), f"class {value}")

    def provenance(self) -> dict:
        """JSON-friendly record of how this result was made (the predictor's record, plus the
        plugin's request and inputs)."""
        from napari_autofocus.inference.predictor import provenance

        return {
            "model": self.request.model_path,
            "model_name": self.name,
            "arch": self.card.arch,
            "options": {
                "device": self.request.device,
                "probabilities": self.request.probabilities,
                "arch_hint": self.request.arch,
                "attention_override": list(self.request.override) if self.request.override else None,
                "crop_to_foreground": self.request.crop,
            },
            **provenance(self.prediction, self.preprocessing, self.card),
            "inputs": list(self.input_layers),
            "created": self.created,
        }


def load(request: RunRequest):
    """(model, card) for a request; torch is imported here."""
    from napari_autofocus.nets import load_model

    hints = {}
    if is_reference_checkpoint(request.model_path) and request.arch != "auto":
        hints["arch"] = request.arch
    return load_model(request.model_path, **hints)


def stack_inputs(inputs: Sequence[np.ndarray], card: ModelCard) -> np.ndarray:
    """The raw layers as one (C, D, H, W) float32 scan, after checking they fit the model."""
    from napari_autofocus.inference.scan_checks import check_channel_count

    check_channel_count(card, len(inputs))
    shapes = {np.shape(a) for a in inputs}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise AutofocusError(f"inputs must be 3D volumes of one shape, got shapes {sorted(shapes)}")
    return np.stack([np.asarray(a, dtype=np.float32) for a in inputs])


def predict(
    model,
    card: ModelCard,
    inputs: Sequence[np.ndarray],
    request: RunRequest,
    *,
    spacing: Sequence[float],
    input_layers: Sequence[str] | None = None,
    scan_description: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
):
    """(prediction, report) through the predictor every caller uses, with the request's options."""
    from napari_autofocus.inference import predictor
    from napari_autofocus.nets.autofocus import override_attention

    layer, value = request.override if request.override is not None else (None, None)
    forced = override_attention(model, layer, value) if layer is not None else contextlib.nullcontext()
    scan = predictor.Scan(
        stack_inputs(inputs, card),
        spacing,
        channel_names=input_layers,
        description=scan_description,
        arrays=inputs,
        owned=True,  # stack_inputs made a new array: the layers' data is never changed
    )
    options = predictor.PredictOptions(
        device=request.device, probabilities=request.probabilities, attention=True, crop=request.crop
    )
    with forced:
        return predictor.predict(model, card, scan, options, progress=progress, cancel=cancel)


def run_model(
    request: RunRequest,
    inputs: Sequence[np.ndarray],
    *,
    input_layers: Sequence[str],
    placement: Placement,
    progress: Callable[[int, int], None] | None = None,
    status: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    model=None,
    card: ModelCard | None = None,
) -> SegmentationResult:
    """Load (unless given), normalise, predict; the worker's whole job."""
    from napari_autofocus.inference import Cancelled, resolve_device

    if model is None:
        model, card = load(request)
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled before the network ran")
    device = str(resolve_device(request.device))
    if status is not None:
        status(device)
    prediction, report = predict(
        model, card, inputs, request, spacing=placement.spacing, input_layers=input_layers,
        scan_description=placement.description,
        progress=progress, cancel=cancel,
    )  # fmt: skip
    return SegmentationResult(
        request=request,
        card=card,
        prediction=prediction,
        receptive_field_min=int(model.receptive_field_min),
        input_layers=list(input_layers),
        inputs=list(inputs),
        placement=placement,
        network_spacing=tuple(report.network_spacing),
        preprocessing=report.to_dict(),
        model=model,
    )


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CPU and GPU out-of-memory errors, whatever library raised them."""
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()
