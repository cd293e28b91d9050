"""What an exported package shows and says: a cover image and a README with a "Validation" section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PAPER = {
    "text": "Qin Y., Kamnitsas K., Ancha S. et al. Autofocus Layer for Semantic Segmentation. MICCAI 2018.",
    "url": "https://arxiv.org/abs/1805.08403",
}


def cover_image(path: Path, case, outputs: list[np.ndarray], layers: list[str], card) -> None:
    """A 2:1 cover: the test scan's middle slice under its labels, and the expected dilation rate
    (sum of rate x weight) of the autofocus layer whose rates vary most there, with its colour bar
    (the labels alone for networks without attention)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap

    z, y, x = case.scan_slices
    middle = (z.start + z.stop) // 2
    anatomy = case.image[0, 0, middle, y, x]
    labels = outputs[0][0, 0, middle, y, x]
    inside = np.any(case.image[0, :, middle, y, x] != 0, axis=0)
    figure, (left, right) = plt.subplots(1, 2, figsize=(8, 4), dpi=100)
    for ax in (left, right):
        ax.imshow(anatomy, cmap="gray")
        ax.set_axis_off()
    colours = ["none", "#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#a65628"]
    classes = ListedColormap(colours[: max(card.num_classes, 2)])
    left.imshow(
        np.ma.masked_equal(labels, 0), cmap=classes, vmin=0, vmax=max(card.num_classes - 1, 1), alpha=0.6
    )
    left.set_title(f"{card.arch}: labels", fontsize=10)
    if layers:
        rates = np.asarray(card.dilations or range(1, outputs[2].shape[1] + 1), dtype=np.float32)
        expected = [np.tensordot(rates, o[0, :, middle, y, x], axes=1) for o in outputs[2:]]
        spread = [float(np.nanstd(np.where(inside, e, np.nan))) if inside.any() else 0.0 for e in expected]
        best = int(np.argmax(spread))
        shown = right.imshow(
            np.ma.masked_where(~inside, expected[best]), cmap="viridis", vmin=rates.min(), vmax=rates.max()
        )
        figure.colorbar(shown, ax=right, fraction=0.046, pad=0.02, label="expected rate")
        right.set_title(
            f"{layers[best]}: expected rate, low = zoomed in (rates {', '.join(f'{r:g}' for r in rates)})",
            fontsize=9,
        )
    else:
        right.imshow(np.ma.masked_equal(labels, 0), cmap=classes, vmin=0, vmax=max(card.num_classes - 1, 1))
        right.set_title("labels (no autofocus layer)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def package_readme(name: str, card, net, halo: int, case) -> str:
    """The package's documentation."""
    classes = ", ".join(f"{k} = {v}" for k, v in sorted(card.class_names.items(), key=lambda kv: int(kv[0])))
    modalities = ", ".join(card.modalities) or f"{card.in_channels} channel(s)"
    spacing = card.target_spacing or card.spacing
    layers = [g["name"] for g in net.autofocus_geometry()]
    attention = (
        f"`{'`, `'.join(n.lower() for n in layers)}`: each autofocus layer's attention, one channel per "
        f"dilation rate ({', '.join(str(r) for r in card.dilations)}), weights that sum to 1 per voxel."
        if layers
        else "none (this network has no autofocus layer)."
    )
    return f"""# {name}

{card.description or card.arch} — a 3D segmentation network with autofocus layers (Qin et al., MICCAI
2018), exported by napari-autofocus. An autofocus layer runs one kernel at several dilation rates and
mixes them per voxel with a softmax attention; the attention maps are outputs of this package.

## Inputs
- `scan`: (batch, channel, z, y, x), float32, channels {modalities},
  voxel size {spacing or "as trained"} mm.
- **Normalise first.** Per channel, z-score over the voxels where any channel is non-zero, then set
  every other voxel to {card.normalization.get("outside_value", 0.0)}
  (card: `{json.dumps(card.normalization, sort_keys=True)}`). bioimage.io's `zero_mean_unit_variance`
  has no mask, and a tile does not see the scan's statistics, so the package expects normalised input.
- Voxels at -1e30 (or NaN) in every channel lie outside the scan: the package pads with -1e30
  and computes only where there is data.

## Outputs
- `labels`: {classes}.
- `probabilities`: softmax per class.
- Attention: {attention}

## Geometry and tiling
The network's valid convolutions remove {net.margin} voxels per side; the package pads them back, so
every output has the input's size. Each output declares a halo of {halo} voxels, (RF - 1) / 2 for the
receptive field RF = {net.receptive_field}: a tile keeps only voxels whose receptive field lies in
real data, so tiled prediction gives exactly the labels of one pass over the whole scan. The smallest
input block is {2 * halo + 1} voxels per axis and keeps a single voxel; use blocks well above it
(sizes {2 * halo + 1} + 16 n).

## Validation
- `bioimageio.core`'s `test_model` passes on both weight formats (`pytorch_state_dict`, `torchscript`).
- The test input is a {" x ".join(map(str, case.shape))}-voxel cube of `{case.source}` from voxel
  {list(case.scan_start)} (bundled with napari-autofocus: MNI152 anatomy with simulated tumours, or
  the phantom), normalised, at voxel {list(case.start)} of a {" x ".join(map(str, case.image.shape[2:]))}
  canvas of the outside marker (the smallest input the axes allow; the marker costs nothing).
- napari-autofocus's tests check that the TorchScript entry equals the state dict at two input
  sizes, that bioimage.io's tiled prediction equals napari-autofocus's whole-scan labels
  (`--no-crop`) on the sample, and that the package loads back into napari-autofocus unchanged.
- The bundled models were trained on simulated data: they are for teaching and inspection, not for
  clinical use.

## Citation
{PAPER["text"]} {PAPER["url"]}
"""


def authors_of(card) -> list[str]:
    """The card's authors (``extra.authors``), else this project's contributors."""
    given = card.extra.get("authors")
    if isinstance(given, list) and given and all(isinstance(a, str) for a in given):
        return given
    return ["napari-autofocus contributors"]


def licence_of(card) -> str:
    """The SPDX licence of the weights: the card's ``extra.licence``, else the project's MIT."""
    given = card.extra.get("licence")
    return given if isinstance(given, str) and given else "MIT"


MIT_TEXT = """MIT License

Copyright (c) napari-autofocus contributors

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
associated documentation files (the "Software"), to deal in the Software without restriction,
including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT
NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES
OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN
CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def licence_text(card) -> str:
    """The licence file: MIT for our weights (or the card's own licence named), plus the MNI152
    notice for models trained on the brain phantom, whose anatomy is the MNI152 template."""
    from napari_autofocus._sample_data import SAMPLE_DIR

    licence = licence_of(card)
    text = MIT_TEXT if licence == "MIT" else f"The weights are licensed under {licence} (SPDX).\n"
    notice = SAMPLE_DIR / "brain" / "NOTICE-MNI152.txt"
    if "Brain" in str(card.provenance.get("dataset", "")) and notice.is_file():
        text += "\nTraining data: simulated tumours on the MNI152 template, under this notice:\n\n"
        text += notice.read_text(encoding="utf-8")
    return text


def bundle_readme(name: str, card, net) -> str:
    """The MONAI bundle's docs/README.md."""
    classes = ", ".join(f"{k} = {v}" for k, v in sorted(card.class_names.items(), key=lambda kv: int(kv[0])))
    return f"""# {name}

{card.description or card.arch} — a 3D segmentation network with autofocus layers (Qin et al., MICCAI
2018), exported by napari-autofocus as a MONAI bundle.

## Run
    pip install napari-autofocus monai nibabel
    python -m monai.bundle run --config_file configs/inference.json --meta_file configs/metadata.json \\
        --bundle_root . --dataset_dir /path/to/scans --output_dir /path/to/out

Every `*.nii*` in `dataset_dir` ({card.in_channels} channel(s): {", ".join(card.modalities) or "as trained"})
becomes `<case>_seg.nii.gz` in `output_dir` (labels {classes}).

## What runs
- Preprocessing: MONAI's `LoadImaged`, channels first, `Orientationd` to SPL (napari-autofocus's axis
  order), then the card's normalisation (`{json.dumps(card.normalization, sort_keys=True)}`):
  z-score inside the voxels that are non-zero in any channel, everything else set to the outside value.
- Network: napari-autofocus's `{card.arch}` ({net.margin} voxels lost per side by valid convolutions,
  receptive field {net.receptive_field}^3), weights in `models/model.pt` (a plain state dict).
- Inferer: napari-autofocus's exact engine (`ExactInferer`), one pass over the scan's foreground box
  with bounded memory. MONAI's sliding window would zero-pad every dilated branch at each tile border
  and change the labels near tile seams; the engine gives exactly what one pass over the scan gives.

## Validation
- `python -m monai.bundle verify_net_in_out` passes (network input/output channels and dtype).
- `python -m monai.bundle verify_metadata` checks `configs/metadata.json` against MONAI's schema
  (it downloads the schema named in `schema` unless `--filepath` gives a local copy).
- napari-autofocus's tests run this bundle on its bundled sample and compare the labels with
  `python -m src_training predict`: identical.
- The bundled models were trained on simulated data: for teaching and inspection, not clinical use.

## Citation
{PAPER["text"]} {PAPER["url"]}
"""
