"""Shared pieces of the widget tests: tiny random models saved as files, a small two-channel scan."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

PLUGIN = "napari-autofocus"
TINY = (4,) * 8
CLASSES = {"0": "background", "1": "small lesion", "2": "large lesion"}
SHAPE = (32, 36, 40)


def make_model_file(path, arch="AFN2", seed=0, std=0.3):
    """A randomly initialised network with weights large enough that attention matters."""
    import torch
    from torch import nn

    from napari_autofocus.nets import build_network, save_model

    torch.manual_seed(seed)
    model = build_network(arch, 2, 3, channels=TINY)
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    for p in model.parameters():
        if p.dim() == 5:
            p.data.normal_(0, std, generator=g)
    save_model(
        model,
        path,
        modalities=["T1-like", "T2-like"],
        class_names=dict(CLASSES),
        regions={"any lesion": [1, 2]},
        normalization={"scheme": "zscore", "roi": "all"},
    )
    return str(path)


def add_scan(viewer, shape=SHAPE, scale=(1.5, 1.0, 0.8), translate=(10.0, -5.0, 3.0)):
    """Two image channels (named like the sample) and a ground-truth labels layer."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(z**2 + y**2 + x**2)
    t1 = (r < 0.6).astype(np.float32) + 0.1 * rng.standard_normal(shape).astype(np.float32)
    t2 = (r < 0.3).astype(np.float32) + 0.1 * rng.standard_normal(shape).astype(np.float32)
    truth = ((r < 0.6).astype(np.uint8) + (r < 0.3)).astype(np.uint8)
    kw = {"scale": scale, "translate": translate}
    # deliberately in the opposite order of the model's modalities: matching is by name
    viewer.add_image(t2, name="case [T2-like]", metadata={"channel_name": "T2-like"}, **kw)
    viewer.add_image(t1, name="case [T1-like]", metadata={"channel_name": "T1-like"}, **kw)
    viewer.add_labels(truth, name="case ground truth", metadata={"role": "ground truth"}, **kw)
    return viewer


def click(qtbot, button):
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def run_and_wait(qtbot, widget, button=None, timeout=30000):
    """Click Run (or ``button``) and wait until the widget's run has ended and its worker is gone."""
    with qtbot.waitSignal(widget.run_finished, timeout=timeout):
        click(qtbot, button or widget.run_button)
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=timeout)


@pytest.fixture
def notes(monkeypatch):
    """Capture napari notifications by kind: {'error': [...], 'info': [...], 'warning': [...]}."""
    from napari.utils import notifications

    seen = {"error": [], "info": [], "warning": []}
    for kind in seen:
        monkeypatch.setattr(notifications, f"show_{kind}", lambda msg, kind=kind: seen[kind].append(str(msg)))
    return seen


@pytest.fixture(autouse=True)
def private_config(monkeypatch, tmp_path):
    """The recent-models list goes to a temporary folder."""
    monkeypatch.setenv("NAPARI_AUTOFOCUS_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def model_file(tmp_path):
    return make_model_file(tmp_path / "tiny_afn2.safetensors")


def open_segment(viewer, model_path):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    widget.picker.set_model_file(model_path)
    return widget
