"""Patch augmentation: random flips and optional per-channel intensity scale/shift.

Flips act on the input patch and its label target together; the target is the centred crop of the
input, so flipping both keeps every label voxel over its input voxel. Intensity changes act on the
normalised image (multiplying by ``1 + U(-scale, scale)`` and adding ``U(-shift, shift)`` per
channel), which mimics scanner gain/offset differences that z-scoring does not fully remove.
All randomness comes from the caller's numpy Generator so patches are reproducible.
"""

from __future__ import annotations

import numpy as np


def augment_patch(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    flip_axes=(0, 1, 2),
    flip_p: float = 0.5,
    intensity_scale: float = 0.0,
    intensity_shift: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a (C, D, H, W) patch and its (d, h, w) target; returns contiguous arrays."""
    for axis in flip_axes:
        if rng.random() < flip_p:
            image = np.flip(image, axis=axis + 1)
            label = np.flip(label, axis=axis)
    image = np.ascontiguousarray(image, dtype=np.float32)
    if intensity_scale > 0 or intensity_shift > 0:
        n = image.shape[0]
        scale = (
            1.0 + rng.uniform(-intensity_scale, intensity_scale, size=n)
            if intensity_scale > 0
            else np.ones(n)
        )
        shift = rng.uniform(-intensity_shift, intensity_shift, size=n) if intensity_shift > 0 else np.zeros(n)
        image = (image * scale[:, None, None, None] + shift[:, None, None, None]).astype(np.float32)
    return image, np.ascontiguousarray(label)
