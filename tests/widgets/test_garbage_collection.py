"""Full garbage collections run in a turn of their own, never inside the step that adds layers."""

import gc
import threading

import pytest

from napari_autofocus.widgets import _garbage_collection


def push_towards_a_full_collection() -> None:
    """As after a long run: more generation-1 collections than Python waits for before a full one."""
    for _ in range(gc.get_threshold()[2] + 1):
        gc.collect(1)


@pytest.fixture
def full_collections():
    """Where each full collection started: the names of the steps running at that moment."""
    running: list[str] = []
    seen: list[tuple[str, ...]] = []

    def callback(phase, info):
        if phase == "start" and info["generation"] == 2:
            seen.append(tuple(running))

    gc.callbacks.append(callback)
    yield running, seen
    gc.callbacks.remove(callback)


def test_a_full_collection_is_possible_only_after_enough_young_collections():
    gc.collect()
    assert not _garbage_collection.full_collection_possible(1)
    assert _garbage_collection.full_collection_possible(gc.get_threshold()[2])  # many layers: maybe
    push_towards_a_full_collection()
    assert _garbage_collection.full_collection_possible(1)
    gc.disable()
    try:
        assert not _garbage_collection.full_collection_possible(1)  # the collector is off: nothing to fear
    finally:
        gc.enable()


def test_a_runs_result_is_handed_over_after_the_collection_its_layers_could_set_off(qtbot, full_collections):
    from napari_autofocus.widgets._background import BackgroundRun

    running, seen = full_collections
    runner = BackgroundRun(layers_per_result=3)
    release = threading.Event()
    delivered = []

    def on_result(outcome):
        running.append("hand-over")
        delivered.append((outcome, gc.get_count()[2]))
        running.remove("hand-over")

    runner.succeeded.connect(on_result)
    with qtbot.waitSignal(runner.ended, timeout=10000):
        assert runner.start(lambda progress, status, cancel: release.wait(10) and "labels", "Job")
        push_towards_a_full_collection()
        release.set()
    assert delivered and delivered[0][0] == "labels"
    assert seen and ("hand-over",) not in seen  # collected before the hand-over, not during it
    assert delivered[0][1] + 2 * 3 <= gc.get_threshold()[2]  # room left for its three layers
    assert not runner.running


def test_cancel_pressed_before_the_hand_over_adds_nothing(qtbot, notes, monkeypatch):
    from napari_autofocus.widgets._background import BackgroundRun

    runner = BackgroundRun(layers_per_result=3)
    collect = _garbage_collection.collect_now

    def collect_then_cancel():  # the user presses Cancel while the collection runs
        collect()
        runner.cancel()

    monkeypatch.setattr(_garbage_collection, "collect_now", collect_then_cancel)
    delivered = []
    runner.succeeded.connect(delivered.append)
    release = threading.Event()
    with qtbot.waitSignal(runner.ended, timeout=10000):
        runner.start(lambda progress, status, cancel: release.wait(10) and "labels", "Segment (m)")
        push_towards_a_full_collection()
        release.set()
    assert delivered == []
    assert runner.last_error == "Segment (m): cancelled; nothing was added."
    assert notes["info"] == ["Segment (m): cancelled; nothing was added."]


def test_jobs_that_add_no_layers_never_collect(qtbot, monkeypatch):
    from napari_autofocus.widgets._background import BackgroundRun

    calls = []
    monkeypatch.setattr(_garbage_collection, "collect_now", lambda: calls.append(1))
    runner = BackgroundRun(layers_per_result=0)
    delivered = []
    runner.succeeded.connect(delivered.append)
    push_towards_a_full_collection()
    with qtbot.waitSignal(runner.ended, timeout=10000):
        runner.start(lambda progress, status, cancel: ["a.nii.gz"], "Export")
    assert delivered == [["a.nii.gz"]] and calls == []
