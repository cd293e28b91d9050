"""The result store: layers carry a key, results stay out of napari, and go when their layers go."""

from types import SimpleNamespace

from napari_autofocus.app.results import ResultStore
from napari_autofocus.app.session import RESULT_KEY


class _Events:
    def __init__(self):
        self.callbacks = []

    def connect(self, callback):
        self.callbacks.append(callback)


class _Layers(list):
    def __init__(self):
        super().__init__()
        self.events = SimpleNamespace(removed=_Events())

    def remove(self, layer):
        super().remove(layer)
        for callback in self.events.removed.callbacks:
            callback(SimpleNamespace(value=layer))


class _Viewer:
    def __init__(self):
        self.layers = _Layers()


def test_a_result_lives_as_long_as_a_layer_refers_to_it():
    store, viewer = ResultStore(), _Viewer()
    changes = []
    store.added.connect(lambda key: changes.append(("added", key, len(store))))
    store.removed.connect(lambda key: changes.append(("removed", key, len(store))))
    result = SimpleNamespace(id="a" * 32)  # a SegmentationResult's stable id
    key = store.add(result)
    assert key == result.id  # a short string in the layer, not the result
    store.watch(viewer)
    store.watch(viewer)  # watching twice connects once
    labels = SimpleNamespace(metadata={RESULT_KEY: key})
    copy = SimpleNamespace(metadata={RESULT_KEY: key})  # napari's "duplicate layer" copies metadata
    viewer.layers += [labels, copy, SimpleNamespace(metadata={})]
    assert store.of(labels) is result and store.of(copy) is result and store.of(viewer.layers[2]) is None
    viewer.layers.remove(labels)
    assert store.of(copy) is result  # the copy still refers to it
    viewer.layers.remove(copy)
    assert store.of(copy) is None and len(store) == 0
    assert changes == [("added", key, 1), ("removed", key, 0)]
    assert store.of(SimpleNamespace()) is None and store.of(SimpleNamespace(metadata={RESULT_KEY: 3})) is None
    assert len(viewer.layers.events.removed.callbacks) == 1
