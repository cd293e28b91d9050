"""The segmentation results of this session, kept out of napari's layers.

A result holds the loaded model and the input arrays (so the explorer and counterfactuals never
re-run or re-load anything); in a layer's ``metadata`` it would be copied with the layer, saved
with it, or printed. The labels layer carries only the result's id (a short string, stable for the
result's life); widgets ask :data:`RESULTS` for the result, and :meth:`ResultStore.watch` drops a
result once no layer of a viewer refers to it.

The hand-off is evented (psygnal, no Qt): ``added(id)`` fires when a widget puts a result into the
viewer, ``removed(id)`` when its last layer is gone. The explorer subscribes to both.
"""

from __future__ import annotations

import weakref

from psygnal import Signal

from napari_autofocus.app.session import RESULT_KEY, SegmentationResult


class ResultStore:
    """The session's results by id; ``added(id)`` and ``removed(id)`` say when they come and go."""

    added = Signal(str)
    removed = Signal(str)

    def __init__(self) -> None:
        self._results: dict[str, SegmentationResult] = {}
        self._watched: weakref.WeakSet = weakref.WeakSet()  # viewers (a closed one's id may come back)

    def __len__(self) -> int:
        return len(self._results)

    def add(self, result: SegmentationResult) -> str:
        """Keep ``result``; returns its id, to put in its labels layer's metadata."""
        key = result.id
        self._results[key] = result
        self.added.emit(key)
        return key

    def get(self, key: str | None) -> SegmentationResult | None:
        """The result kept under ``key`` (None once its last layer is gone)."""
        return self._results.get(key) if isinstance(key, str) else None

    def of(self, layer) -> SegmentationResult | None:
        """The result behind a labels layer (None for any other layer)."""
        metadata = getattr(layer, "metadata", None)
        return self.get(metadata.get(RESULT_KEY) if isinstance(metadata, dict) else None)

    def watch(self, viewer) -> None:
        """Drop a result when the last layer of ``viewer`` that refers to it is removed."""
        if viewer in self._watched:
            return
        self._watched.add(viewer)

        def removed(event) -> None:
            key = event.value.metadata.get(RESULT_KEY) if isinstance(event.value.metadata, dict) else None
            still = any(layer.metadata.get(RESULT_KEY) == key for layer in viewer.layers)
            if key in self._results and not still:
                del self._results[key]
                self.removed.emit(key)

        viewer.layers.events.removed.connect(removed)


RESULTS = ResultStore()  # one per process, like napari's viewers
