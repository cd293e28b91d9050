"""What the attention explorer shows, computed from a cached result without the network.

One fixed hue per rate position (the same in the weight layers, the arg-max layer and the charts),
layer names such as ``AF3 · r=6``, the voxel readout under the cursor and the per-structure means.
NumPy only; the widget turns these into napari layers and matplotlib bars.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from napari_autofocus.analysis import attention_maths

# Hues by rate position (smallest rate first): blue, green, orange, red, then violet, cyan, yellow, pink.
RATE_HUES = (
    (0.20, 0.45, 1.00),
    (0.15, 0.85, 0.25),
    (1.00, 0.60, 0.05),
    (1.00, 0.15, 0.25),
    (0.65, 0.30, 1.00),
    (0.10, 0.85, 0.90),
    (0.95, 0.90, 0.10),
    (1.00, 0.45, 0.75),
)
SEP = " · "


def rate_hue(index: int) -> tuple[float, float, float]:
    return RATE_HUES[index % len(RATE_HUES)]


def weight_layer_name(layer: str, rate: int) -> str:
    return f"{layer}{SEP}r={rate}"


def derived_layer_name(layer: str, kind: str) -> str:
    """``kind``: "arg-max rate", "expected rate", "entropy"; ``layer`` may be "all" for zoom."""
    return f"{layer}{SEP}{kind}"


def argmax_colors(rates: Sequence[int]) -> dict[int | None, tuple]:
    """Colours for an arg-max-rate labels layer: the value is the rate itself (hovering a voxel shows
    14, as the exported file holds 14), coloured with its rate's hue; 0 (not computed) is clear."""
    colors: dict[int | None, tuple] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for k, rate in enumerate(rates):
        colors[int(rate)] = (*rate_hue(k), 1.0)
    return colors


def blend(attention: np.ndarray) -> np.ndarray:
    """(D, H, W, 3) RGB in [0, 1]: the rates' hues mixed by their weights, black where not computed.

    The weights sum to 1, so the mix stays inside the hues' range: it never washes to white the way
    K additive layers do, and a voxel's colour says at once which rates it listens to."""
    hues = np.asarray([rate_hue(k) for k in range(attention.shape[0])], dtype=np.float32)
    rgb = np.tensordot(attention.astype(np.float32, copy=False), hues, axes=([0], [0]))
    np.nan_to_num(rgb, copy=False, nan=0.0)  # on the 3 colours, not the K weights: the cheaper side
    return np.clip(rgb, 0.0, 1.0, out=rgb)


def blend_rgba(attention: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(D, H, W, 4) uint8: :func:`blend`, opaque inside the foreground where computed and fully
    transparent elsewhere, so air and the uncomputed box never tint the scan (nor hide it in 3D)."""
    rgba = np.empty((*attention.shape[1:], 4), dtype=np.uint8)
    rgba[..., :3] = blend(attention) * 255 + 0.5
    rgba[..., 3] = shown_voxels(attention, foreground) * np.uint8(255)
    return rgba


def shown_voxels(attention: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Where a map has something to say: inside the foreground and computed."""
    return foreground & ~np.isnan(attention[0])


def outside_as_nan(data: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """A float map with NaN (drawn transparent) where nothing is shown."""
    return np.where(shown, data, np.float32(np.nan)).astype(np.float32, copy=False)


def rate_region(attention: np.ndarray, foreground: np.ndarray, k: int) -> np.ndarray:
    """0/1 mask of where rate ``k`` has the largest weight (inside the foreground, computed): the
    3D view draws one translucent surface per rate around its region. float32: napari 0.9 draws
    no iso-surface of an 8-bit volume."""
    winner = np.argmax(np.nan_to_num(attention, nan=-1.0), axis=0)
    return ((winner == k) & shown_voxels(attention, foreground)).astype(np.float32)


def legend_html(rates: Sequence[int], spacing_mm: float | None = None) -> str:
    """'■ r=2 ■ r=6 ...' with each square in its rate's colour (the dock's legend)."""
    parts = []
    for k, rate in enumerate(rates):
        r, g, b = (int(255 * c) for c in rate_hue(k))
        gap = f"&nbsp;({rate * spacing_mm:.0f}&nbsp;mm)" if spacing_mm else ""  # one item never wraps
        parts.append(f'<span style="color: rgb({r},{g},{b})">&#9632;</span>&nbsp;r={rate}{gap}')
    return " &nbsp; ".join(parts)


def legend_text(rates: Sequence[int]) -> str:
    """The on-canvas legend (one colour of text, so the hues are named)."""
    names = ("blue", "green", "orange", "red", "violet", "cyan", "yellow", "pink")
    return "colours: " + ", ".join(f"{names[k % len(names)]} r={r}" for k, r in enumerate(rates))


HUE_KINDS = ("blend", "weight", "arg-max rate", "region")  # maps coloured by rate: one hue legend
UNITS = {
    "expected rate": "voxels between kernel taps",
    "entropy": "0: one rate decides, 1: all rates equal",
    "zoom": "mm the network sees per voxel",
}


def map_legend(kind: str, layer: str | None, rates: Sequence[int], limits=None) -> str:
    """One line of the canvas legend for one kind of map, with its units (a colour bar comes with
    the scalar maps: ``limits`` are its ends)."""
    if kind in HUE_KINDS:
        return f"{layer} {legend_text(rates)} (voxels)"
    low, high = limits if limits is not None else (0.0, 1.0)
    name = f"{layer} {kind}" if layer else kind
    return f"{name} {low:.3g}-{high:.3g}: {UNITS[kind]} (colour bar)"


def derived_map(attention: np.ndarray, rates: Sequence[int], kind: str) -> np.ndarray:
    """One per-layer derived map: arg-max rate (labels), expected rate or entropy."""
    if kind == "arg-max rate":
        return attention_maths.argmax_rate(attention, rates)
    if kind == "expected rate":
        return attention_maths.expected_rate(attention, rates)
    if kind == "entropy":
        return attention_maths.normalized_entropy(attention)
    raise ValueError(f"unknown derived map {kind!r}")


def zoom_mm_map(result) -> np.ndarray:
    """Effective receptive field (mm) from every autofocus layer of a result (network voxels to mm
    with the grid the network computed on, which differs from the layer's when it resampled)."""
    voxels = attention_maths.zoom_voxels(result.attention, result.rates, result.receptive_field_min)
    return attention_maths.zoom_mm(voxels, result.network_spacing).astype(np.float32)


def voxel_readout(result, index: Sequence[int]) -> dict | None:
    """K weights of every autofocus layer and the zoom in mm at one voxel; None outside or not computed."""
    index = tuple(int(round(i)) for i in index)
    shape = result.labels.shape
    if len(index) != 3 or any(i < 0 or i >= n for i, n in zip(index, shape, strict=True)):
        return None
    weights = {name: a[(slice(None), *index)].astype(np.float32) for name, a in result.attention.items()}
    if not weights or any(np.isnan(w).any() for w in weights.values()):
        return None
    zoom_voxels = attention_maths.receptive_field(
        result.receptive_field_min,
        [float(np.dot(w, result.rates[n])) for n, w in weights.items()],
        [min(result.rates[n]) for n in weights],
    )
    spacing = float(np.prod(result.network_spacing)) ** (1 / 3)
    return {
        "index": index,
        "label": int(result.labels[index]),
        "weights": weights,
        "zoom_voxels": zoom_voxels,
        "zoom_mm": zoom_voxels * spacing,
    }


def structure_means(
    result, labels: np.ndarray, classes: Iterable[int], layers: Sequence[str], index=None
) -> dict[str, dict[int, np.ndarray]]:
    """Layer -> class -> mean weight per rate, inside each class of ``labels``. ``index``: a
    :class:`~napari_autofocus.analysis.attention_maths.ClassIndex` from :func:`class_index`, to share
    between calls."""
    classes = list(classes)
    index = index if index is not None else class_index(result, labels, classes)
    return {
        name: attention_maths.mean_attention_per_class(result.attention[name], labels, classes, index)
        for name in layers
    }


def class_index(result, labels: np.ndarray, classes: Iterable[int]) -> attention_maths.ClassIndex:
    """Which voxels of ``labels`` hold each class, among those the network computed (every autofocus
    layer of a result covers the same voxels)."""
    first = next(iter(result.attention.values()), None)
    computed = ~np.isnan(first[0]) if first is not None else np.ones(labels.shape, bool)
    return attention_maths.ClassIndex.build(computed, labels, list(classes))
