"""The two pieces a MONAI bundle of ours names in its ``inference.json``: the card's normalisation as
a MONAI dictionary transform, and our exact engine as a MONAI inferer.

MONAI's ``SlidingWindowInferer`` runs independent tiles, and every autofocus and ASPP branch zero-pads
at a tile's border: attention maps would show the seams again. :class:`ExactInferer` runs
:func:`~napari_autofocus.inference.engine.predict_volume` instead, which gives exactly one pass over
the scan's foreground box with bounded memory. No MONAI import here: both are plain callables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class NormalizeAsCard:
    """Normalise ``data[key]`` (C, D, H, W) as a model card says (z-score inside the non-zero voxels
    of any channel, outside set to the card's value): what napari-autofocus does before a network runs."""

    def __init__(self, keys: Sequence[str] | str, normalization: Mapping) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.normalization = dict(normalization)

    def __call__(self, data: Mapping) -> dict:
        from napari_autofocus.inference.normalization import normalize

        out = dict(data)
        for key in self.keys:
            image = out[key]
            array = np.asarray(
                image.detach().cpu().numpy() if hasattr(image, "detach") else image, np.float32
            )
            normalised = normalize(array, self.normalization)
            if hasattr(image, "detach"):  # keep MONAI's MetaTensor (its affine) around the new values
                import torch

                image = image.clone()
                image.copy_(torch.from_numpy(normalised))
                out[key] = image
            else:
                out[key] = normalised
        return out


class ExactInferer:
    """``inferer(inputs, network)`` for MONAI evaluators: (N, C, D, H, W) -> (N, classes, D, H, W)
    probabilities from our engine (whole mode, cropped to the foreground), label 0's probability 1
    outside it."""

    def __init__(self, pad_value: float = 0.0, memory_budget_gib: float | None = None) -> None:
        self.pad_value = float(pad_value)
        self.memory_budget_gib = memory_budget_gib

    def __call__(self, inputs, network, *args, **kwargs):
        import torch

        from napari_autofocus.inference.engine import predict_volume

        options = {} if self.memory_budget_gib is None else {"memory_budget_gib": self.memory_budget_gib}
        device = next(network.parameters()).device
        results = []
        for item in inputs:
            prediction = predict_volume(
                network,
                item.detach().cpu().numpy(),
                device=device,
                probabilities=True,
                pad_value=self.pad_value,
                **options,
            )
            results.append(torch.from_numpy(np.asarray(prediction.probabilities, dtype=np.float32)))
        out = torch.stack(results).to(inputs.device)
        if hasattr(inputs, "meta"):  # a MONAI MetaTensor: the labels keep the scan's affine and file name
            from monai.data import MetaTensor

            out = MetaTensor(out)
            out.copy_meta_from(inputs)
        return out
