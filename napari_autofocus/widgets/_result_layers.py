"""Put a result into the viewer: labels with class names, optional probabilities, provenance.

Outputs sit on the input's grid (scale, translate, affine, NIfTI geometry) and are tagged in
``metadata["autofocus"]`` with the model and the widget that made them, so running a model again
replaces its previous layers instead of piling them up.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from napari.utils.colormaps import DirectLabelColormap

from napari_autofocus.app.results import RESULTS
from napari_autofocus.app.session import RESULT_KEY, SegmentationResult

TAG = "autofocus"


def placement(result: SegmentationResult) -> dict:
    """scale/translate/affine kwargs that put a layer on the result's input grid."""
    return result.placement.layer_kwargs()


def base_metadata(result: SegmentationResult, owner: str, kind: str) -> dict:
    meta = {TAG: {"owner": owner, "kind": kind, "model": result.request.model_path, **result.provenance()}}
    if result.geometry is not None:
        meta["nifti"] = result.geometry
    return meta


def remove_outputs(viewer, owner: str, model: str | None = None) -> None:
    """Remove the layers a widget made earlier (for one model, or all of them), in one batch:
    napari collects garbage after each removal otherwise (0.2 s each)."""
    stale = []
    for layer in viewer.layers:
        tag = layer.metadata.get(TAG) if isinstance(layer.metadata, dict) else None
        if tag and tag.get("owner") == owner and (model is None or tag.get("model") == model):
            stale.append(layer)
    if stale:
        with viewer.layers.batched_update():
            for layer in stale:
                viewer.layers.remove(layer)


def class_features(result: SegmentationResult) -> pd.DataFrame:
    """napari Labels features: one row per label value with its class name (shown on hover)."""
    values = list(range(result.card.num_classes))
    return pd.DataFrame({"index": values, "class": [result.class_name(v) for v in values]})


# Class colours of every labels layer the plugin adds: bright on a grey scan (napari's default
# palette draws some classes dark red, nearly invisible on small lesions), background clear.
CLASS_COLOURS = (
    (1.0, 0.85, 0.0),
    (0.0, 0.85, 1.0),
    (1.0, 0.3, 1.0),
    (0.55, 1.0, 0.3),
    (1.0, 0.55, 0.45),
    (0.7, 0.6, 1.0),
)


def class_colormap(num_classes: int) -> DirectLabelColormap:
    colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for value in range(1, max(num_classes, 2)):
        colours[value] = (*CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)], 1.0)
    return DirectLabelColormap(color_dict=colours)


def add_labels(viewer, result: SegmentationResult, owner: str, name: str | None = None):
    """The result's labels layer, owning the result in its metadata (the explorer reads it there)."""
    metadata = base_metadata(result, owner, "labels")
    metadata[RESULT_KEY] = RESULTS.add(result)  # the key; the result itself stays out of the layer
    RESULTS.watch(viewer)
    layer = viewer.add_labels(
        result.labels,
        name=name or f"{result.name} labels",
        metadata=metadata,
        features=class_features(result),
        colormap=class_colormap(result.card.num_classes),
        opacity=0.7,
        **placement(result),
    )
    return layer


def add_probabilities(viewer, result: SegmentationResult, owner: str) -> list:
    if result.probabilities is None:
        return []
    layers = []
    for value, p in enumerate(result.probabilities):
        if value == 0:
            continue
        layers.append(
            viewer.add_image(
                np.asarray(p, dtype=np.float32),
                name=f"{result.name} p({result.class_name(value)})",
                metadata=base_metadata(result, owner, "probability"),
                colormap="magma",
                contrast_limits=(0.0, 1.0),
                blending="additive",
                visible=False,
                **placement(result),
            )
        )
    return layers


def legend(result: SegmentationResult) -> str:
    """'0 background · 1 small lesion · …' for the widget."""
    return " · ".join(f"{v} {result.class_name(v)}" for v in range(result.card.num_classes))


EMPTY_RESULT = "the model labelled every voxel background: an empty result (no structure found)"


def result_notes(result: SegmentationResult | None) -> list[str]:
    """What every picture of a result must say with it: how the scan does not fit the model (a
    phantom model on a real scan draws convincing maps all the same) and whether it is empty."""
    if result is None:
        return []
    return [*result.warnings, *([EMPTY_RESULT] if result.empty else [])]


MARK_CANDIDATES = ((1.0, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def distinct_colour(labels_layer, num_classes: int) -> tuple[float, float, float, float]:
    """A colour for marking voxels (changed labels) that no class of ``labels_layer`` is drawn in:
    the candidate farthest from every class colour (white, magenta, yellow, cyan or black)."""
    classes = np.asarray(labels_layer.colormap.map(np.arange(1, max(num_classes, 2))))[:, :3]
    far = max(MARK_CANDIDATES, key=lambda c: float(np.min(np.linalg.norm(classes - np.asarray(c), axis=1))))
    return (*far, 1.0)
