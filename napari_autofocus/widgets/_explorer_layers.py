"""The explorer's napari layers: built on a worker thread, added one per turn of the event loop,
hidden instead of deleted, refilled in place after a re-run.

Adding a napari layer takes 0.05-0.1 s on a 2-core machine and drawing it as much again; deleting
one makes napari collect garbage (0.1-0.2 s). So the explorer does neither more than it must:

- an unticked map's layer is hidden, not deleted; ticking it again shows it at once, and a newly
  ticked map of the same kind takes over a hidden layer (renamed and refilled) before any is added;
- after a re-run (or another result) the same layers get the new data: their place, opacity and
  visibility stay as the user left them; hidden ones are refilled too, so none holds stale maps;
- each map is computed on a worker thread while the GUI thread is idle, and handed to napari one
  layer per turn of the event loop, so the viewer keeps answering in between;
- before a new layer, a full garbage collection that Python could start meanwhile is run in a turn
  of its own (see :mod:`._garbage_collection`), so the two pauses never add up.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from napari.utils.colormaps import Colormap, DirectLabelColormap
from qtpy.QtCore import QObject, QTimer

from napari_autofocus.analysis.explorer_maps import (
    argmax_colors,
    blend_rgba,
    derived_map,
    outside_as_nan,
    rate_hue,
    rate_region,
    shown_voxels,
    zoom_mm_map,
)
from napari_autofocus.widgets import _common, _garbage_collection
from napari_autofocus.widgets._result_layers import TAG, placement

OWNER = "explorer"


def layer_content(result, kind: str, af: str | None, k: int | None) -> tuple[np.ndarray, dict]:
    """The data of one explorer layer (autofocus layer ``af``, rate index ``k`` for weights and 3D
    regions) and the styling that depends on it (colormap, limits: given, so napari need not scan
    the data). Every map is transparent outside the foreground and where nothing was computed."""
    foreground = result.foreground
    if kind == "zoom":
        first = next(iter(result.attention.values()))
        data = outside_as_nan(zoom_mm_map(result), shown_voxels(first, foreground))
        return data, {"colormap": "viridis", "contrast_limits": finite_limits(data)}
    a, rates = result.attention[af], result.rates[af]
    if kind == "blend":  # 8-bit RGBA: a third of the float texture, and nothing for napari to rescale
        return blend_rgba(a, foreground), {"contrast_limits": (0, 255)}
    if kind == "region":
        return rate_region(a, foreground, k), {"colormap": _rate_colormap(k), "contrast_limits": (0.0, 1.0)}
    shown = shown_voxels(a, foreground)
    if kind == "weight":
        return outside_as_nan(a[k], shown), {"colormap": _rate_colormap(k), "contrast_limits": (0.0, 1.0)}
    if kind == "arg-max rate":
        data = np.where(shown, derived_map(a, rates, kind), 0).astype(np.int32)
        return data, {"colormap": DirectLabelColormap(color_dict=argmax_colors(rates))}
    data = outside_as_nan(derived_map(a, rates, kind), shown)
    if kind == "entropy":
        return data, {"colormap": "magma", "contrast_limits": (0.0, 1.0)}
    return data, {"colormap": "viridis", "contrast_limits": (float(min(rates)), float(max(rates)))}


def _rate_colormap(k: int) -> Colormap:
    """Black to rate ``k``'s hue (drawn additively: black adds nothing)."""
    return Colormap([[0, 0, 0, 1], [*rate_hue(k), 1]], name=f"autofocus-rate-{k}")


def finite_limits(data: np.ndarray) -> tuple[float, float]:
    """Contrast limits over the finite values (0-1 when there are none)."""
    if not np.isfinite(data).any():
        return 0.0, 1.0
    return float(np.nanmin(data)), float(np.nanmax(data)) + 1e-3


_POOL = None


def background_pool() -> ThreadPoolExecutor:
    """One worker thread for the explorer's NumPy work (maps, means): NumPy releases the GIL in
    its loops, so the GUI thread keeps painting while a map is computed."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="autofocus-explorer")
    return _POOL


def fillable(result, tag: dict) -> bool:
    """Whether ``result`` has what a hidden layer (described by its tag) shows: its autofocus layer,
    and for a weight layer the same rate at the same place (the layer is named by its rate)."""
    if result is None or not result.attention:
        return False
    af, k = tag.get("af"), tag.get("k")
    if af is None:  # the zoom map: any autofocus layer will do
        return True
    if af not in result.attention:
        return False
    return k is None or (k < len(result.rates[af]) and result.rates[af][k] == tag.get("rate"))


class ExplorerLayers(QObject):
    """The layers of one explorer dock (tagged ``owner: explorer`` in their metadata)."""

    def __init__(self, viewer, current_result, parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self._current_result = current_result  # the dock's result now: work for an older one is dropped
        self.changing = False  # our own layer changes fire layer events: the dock ignores them
        self._pending: list[list] = []  # work left: [result, "add" | "refill" | "reuse", name, spec, future]
        self._selected = None  # the layer the user had selected before layers were added
        self._to_show: list = []  # added (hidden) on the last turn, shown on this one
        self._collected_for = None  # the queued add a garbage collection has already made room for
        self._hidden: set[str] = set()  # wanted layers kept off the canvas (another one is stepped to)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(10)  # a gap for painting and input between two layers
        self._timer.timeout.connect(self._build_next)
        self.built = None  # called once the queue is empty
        self.visibility_changed = None  # called when the user shows or hides one of our layers

    @property
    def building(self) -> bool:
        """Whether layers are still being added, shown or refilled."""
        return bool(self._pending or self._to_show)

    def layers(self) -> dict:
        return {
            layer.name: layer
            for layer in self.viewer.layers
            if (layer.metadata.get(TAG) or {}).get("owner") == OWNER
        }

    def remove(self, layers) -> None:
        """Remove our layers (still there) in one batch (napari collects garbage once, not per layer)."""
        layers = [layer for layer in layers if layer in self.viewer.layers]
        if not layers:
            return
        self.changing = True
        try:
            with self.viewer.layers.batched_update():
                for layer in layers:
                    self.viewer.layers.remove(layer)
        finally:
            self.changing = False

    def clear(self) -> None:
        self._pending, self._to_show, self._collected_for = [], [], None
        self.remove(self.layers().values())

    def show(self, result, wanted: dict, hidden=frozenset()) -> None:
        """Make ``wanted`` (name -> (kind, autofocus layer, rate index)) the explorer's layers, all
        visible but those in ``hidden``: built and kept, but off the canvas (one autofocus layer is
        shown at a time; stepping to another only shows its layers)."""
        self._hidden = set(hidden)
        existing = self.layers()
        current = getattr(result, "id", None)
        shown, later, gone = [], [], []
        spare: dict[str, list] = {}  # hidden layers by kind, to be renamed and refilled before adding any
        self.changing = True
        try:
            for name, layer in existing.items():
                tag = layer.metadata[TAG]
                if name in wanted:
                    spec = (tag.get("kind"), tag.get("af"), tag.get("k"))
                    stale = tag.get("result") != current or tag.get("awaiting") or spec != tuple(wanted[name])
                    if stale and (tag.get("parked") or tag.get("awaiting")):
                        # hidden and not (yet) holding these maps: shown once refilled
                        tag["parked"], tag["awaiting"] = False, True
                        shown.append(("reuse", name, wanted[name]))
                    elif stale:
                        shown.append(("refill", name, wanted[name]))
                    elif tag.get("parked"):
                        layer.visible = name not in hidden
                        tag["parked"], tag["stepped"] = False, name in hidden
                    elif name in hidden or tag.get("stepped"):  # stepped off, or back on
                        layer.visible = name not in hidden
                        tag["stepped"] = name in hidden
                else:
                    if not tag.get("parked"):
                        layer.visible = False
                        tag["parked"] = True
                    spare.setdefault(tag["kind"], []).append(layer)
            for name, spec in wanted.items():
                if name in existing:
                    continue
                if spare.get(spec[0]):  # AF1 -> AF3: the AF1 layer becomes AF3's (no new napari layer)
                    layer = spare[spec[0]].pop(0)
                    layer.name = name
                    # shown once it holds AF3's maps; until then its tag already says what it will hold
                    layer.metadata[TAG].update(parked=False, awaiting=True, af=spec[1], k=spec[2])
                    shown.append(("reuse", name, spec))
                else:
                    shown.append(("add", name, spec))
            for layer in (layer for layers in spare.values() for layer in layers):
                tag = layer.metadata[TAG]
                if tag.get("result") != current or tag.get("awaiting"):  # hidden, never with stale maps
                    if fillable(result, tag):
                        later.append(("refill", layer.name, (tag["kind"], tag.get("af"), tag.get("k"))))
                    else:
                        gone.append(layer)
        finally:
            self.changing = False
        self.remove(gone)
        self._pending = [[result, action, name, spec, None] for action, name, spec in shown + later]
        if self._pending:
            # napari selects each new layer; the user's selection comes back once the layers are in
            if self._selected is None:
                self._selected = self.viewer.layers.selection.active
            self._timer.start()

    def arrange(self, below, order) -> None:
        """Our layers as one block right under ``below`` (the prediction; at the top without one),
        sorted by ``order`` from the top of the layer list down. Moves only what is out of place."""
        layers = self.viewer.layers
        ours = sorted(self.layers().values(), key=order, reverse=True)  # bottom of the block first
        others = [layer for layer in layers if layer not in ours]
        at = others.index(below) if below in others else len(others)
        wanted = others[:at] + ours + others[at:]
        if wanted == list(layers):
            return
        self.changing = True
        try:
            for i, layer in enumerate(wanted):  # everything before i is in place: moves go up only
                current = layers.index(layer)
                if current != i:
                    layers.move(current, i)
        finally:
            self.changing = False

    def build_now(self) -> None:
        """Finish the queued work at once (scripts and screenshots)."""
        while self._pending or self._to_show:
            self._build_next(wait=True)

    def _ours(self, name: str) -> bool:
        """Whether ``name`` is still one of our layers (never refill a user's layer of that name)."""
        layer = self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401
        return layer is not None and (layer.metadata.get(TAG) or {}).get("owner") == OWNER

    def _show_added(self) -> None:
        """Show the layers added on the previous turn (unless they were unticked meanwhile)."""
        layers, self._to_show = self._to_show, []
        self.changing = True
        try:
            for layer in layers:
                tag = layer.metadata[TAG]
                if layer in self.viewer.layers and not tag.get("parked"):
                    tag["stepped"] = layer.name in self._hidden
                    layer.visible = not tag["stepped"]
        finally:
            self.changing = False

    def _build_next(self, wait: bool = False) -> None:
        if self._to_show:
            self._show_added()
            if not wait:  # drawing them is this turn's work
                self._timer.start()
                return
        if not self._pending:
            self._finish()
            return
        task = self._pending[0]
        result, action, name, spec, content = task
        kind, af, k = spec
        if content is None:  # computed now, while the GUI thread waits for the next turn
            task[4] = content = background_pool().submit(layer_content, result, *spec)
        if not (wait or content.done()):  # still being computed: look again in a moment
            self._timer.start()
            return
        if action == "add" and not wait and self._collection_first(task):
            self._timer.start()  # this turn was the collection; the layer comes on the next
            return
        self._pending.pop(0)
        self._collected_for = None  # (it held the task, and with it the result)
        if content.exception() is not None:  # say so, drop this layer's work, go on with the rest
            _common.error(f"The explorer could not compute '{name}': {content.exception()}")
        elif result is self._current_result():  # a newer choice has replaced the queue otherwise
            self.changing = True
            try:
                if action == "add" and name not in self.viewer.layers:
                    self._add_layer(result, name, kind, af, k, content.result())
                elif action in ("refill", "reuse") and self._ours(name):
                    layer = self.viewer.layers[name]
                    self._refill_layer(layer, result, kind, af, k, content.result())
                    if action == "reuse":
                        self._to_show.append(layer)
            finally:
                self.changing = False
        if self._pending or self._to_show:
            self._timer.start()
            return
        self._finish()

    def _collection_first(self, task) -> bool:
        """Run a full garbage collection now if Python could start one while ``task`` adds its
        layer (once per task); returns whether it ran."""
        if self._collected_for is task or not _garbage_collection.full_collection_possible():
            return False
        self._collected_for = task
        _garbage_collection.collect_now()
        return True

    def _on_visible(self, *_) -> None:
        if not self.changing and self.visibility_changed is not None:
            self.visibility_changed()

    def _finish(self) -> None:
        """The queue is done: the user's selection back, and tell the dock."""
        selected, self._selected = self._selected, None
        if selected is not None and selected in self.viewer.layers:
            # napari 0.9 can fail to compute the status line in 3D before the mouse has moved over
            # the canvas; the selection is made all the same
            with contextlib.suppress(TypeError):
                self.viewer.layers.selection.active = selected
        if self.built is not None:
            self.built()

    @staticmethod
    def _metadata(result, kind: str, af: str | None, k: int | None) -> dict:
        rate = int(result.rates[af][k]) if k is not None else None
        tag = {"owner": OWNER, "kind": kind, "af": af, "k": k, "rate": rate, "parked": False}
        return {TAG: {**tag, "result": result.id, "model": result.request.model_path}}

    def _add_layer(self, result, name: str, kind: str, af: str | None, k: int | None, content) -> None:
        data, style = content
        kwargs = {"name": name, "metadata": self._metadata(result, kind, af, k), **placement(result), **style}
        kwargs["visible"] = False  # shown on the next turn: creating it and drawing it are two pauses
        if kind == "arg-max rate":
            layer = self.viewer.add_labels(data, opacity=0.5, **kwargs)
        elif kind == "blend":
            layer = self.viewer.add_image(data, rgb=True, opacity=0.65, blending="translucent", **kwargs)
        elif kind == "region":  # 3D: a translucent shaded surface around where this rate wins
            layer = self.viewer.add_image(
                data, rendering="iso", iso_threshold=0.5, opacity=0.45, blending="additive", **kwargs
            )
        elif kind == "weight":
            layer = self.viewer.add_image(data, blending="additive", **kwargs)
        else:  # expected rate, entropy, zoom: scalar maps, each with its colour bar
            layer = self.viewer.add_image(data, opacity=0.7, **kwargs)
            layer.colorbar.visible = True
        layer.events.visible.connect(self._on_visible)  # the user's eye button: the legend follows
        self._to_show.append(layer)

    def _refill_layer(self, layer, result, kind: str, af: str | None, k: int | None, content) -> None:
        """A newer result in an existing layer: data, colours and grid change; visibility, opacity and
        the layer's place in the list stay as the user left them."""
        data, style = content
        layer.data = data
        for key, value in {**placement(result), **style}.items():
            setattr(layer, key, value)
        parked = layer.metadata[TAG].get("parked", False)
        layer.metadata = {**layer.metadata, **self._metadata(result, kind, af, k)}
        layer.metadata[TAG]["parked"] = parked
