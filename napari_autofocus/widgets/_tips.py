"""Tooltips of the dock widgets, in one place, written for a student or a clinician.

Each widget calls :func:`apply` with its own name; a test checks that every button, box, menu,
list and text field of every dock has one.
"""

from __future__ import annotations

TIPS: dict[str, dict[str, str]] = {
    "segment": {
        "probabilities": "Also show, per class, the network's probability of that class at each voxel.",
        "run_button": "Segment the chosen image layers with the model, in the background.\n"
        "The labels appear as a new layer; every autofocus layer's attention is kept for the explorer.",
        "cancel_button": "Stop the run after the current slab; whatever was shown before stays.",
    },
    "compare": {
        "models": "Tick the models to compare. Each runs on the same image layers, one after another.",
        "add_button": "Add a model (.safetensors, our bioimage.io package, an authors' .pth.tar) to the list",
        "truth_combo": "A labels layer with the true classes: the table then gives each model's Dice.",
        "device": "auto: CUDA, then Apple MPS, then CPU",
        "run_button": "Run every ticked model and show them side by side in napari's grid.",
        "cancel_button": "Stop after the current slab; nothing of this run is added.",
        "csv_button": "Save the Dice table as a CSV file.",
    },
    "counterfactual": {
        "result_combo": "The segmentation to modify (a labels layer made by Segment).",
        "layer_combo": "The autofocus layer whose attention is forced.",
        "mode_combo": "What the attention is forced to: all rates weighed the same, or one rate only.\n"
        "Comparing the labels shows what that layer's choice of scale changes.",
        "run_button": "Run the network again with the forced attention; show the voxels whose label changed.",
        "cancel_button": "Stop after the current slab; nothing of this run is added.",
    },
    "export": {
        "result_combo": "The segmentation to save: a labels layer made by Segment, Compare or\n"
        "Counterfactuals.",
        "folder": "Where the NIfTI files and the JSON go; files keep the input scan's affine.",
        "browse": "Choose the output folder.",
        "export_button": "Write the chosen files in the background; existing files are replaced only\n"
        "if you say so.",
    },
    "export_kinds": {
        "labels": "The label map, <model>.nii.gz: what evaluate --pred reads.",
        "probabilities": "One volume per class: the network's probability of that class.",
        "attention": "Per autofocus layer, one volume per dilation rate: its attention weight.",
        "derived": "Per autofocus layer the arg-max rate, expected rate and entropy, and the zoom map in mm.",
    },
    "picker": {
        "browse": "Open a model file (.safetensors, our bioimage.io package, an authors' .pth.tar).",
    },
}


def apply(widget, name: str) -> None:
    """Set the tooltips listed under ``name`` on the widget's attributes of those names."""
    for attribute, text in TIPS[name].items():
        getattr(widget, attribute).setToolTip(text)
