"""Render each dock widget on the phantom sample into docs/screenshots/*.png (headless-safe).

Uses the first bundled model (sample_data/models/*.safetensors) when there is one; otherwise it
trains two small models (AFN2 and BASIC, --train-seconds each on a CPU) on freshly generated phantom
cases, so the pictures show learnt attention rather than noise. Run: ``python tools/make_screenshots.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_autofocus._display import display_available  # noqa: E402
from napari_autofocus.model_library import bundled_models  # noqa: E402

PLUGIN = "napari-autofocus"
CLASSES = {"0": "background", "1": "small lesion", "2": "large lesion"}


def train_model(path: Path, arch: str, seconds: float, seed: int = 0) -> str:
    """A small network trained on random patches of new phantom cases for ``seconds``."""
    import torch
    import torch.nn.functional as F

    from napari_autofocus.nets import build_network, save_model
    from napari_autofocus.normalization import normalize
    from src_training.phantom import make_case

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    cases = [make_case(100 + i) for i in range(3)]
    spec = {"scheme": "zscore", "roi": "nonzero", "outside_value": 0.0}
    cases = [(normalize(image, spec), labels) for image, labels in cases]
    model = build_network(arch, 2, 3, channels=(6, 6, 8, 8, 8, 8, 10, 10))
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    weights = torch.tensor([0.5, 1.0, 1.0])
    size, margin = 41, model.margin
    rng = np.random.default_rng(seed)
    started, steps = time.monotonic(), 0
    model.train()
    while time.monotonic() - started < seconds:
        batch_x, batch_y = [], []
        for _ in range(2):
            image, labels = cases[rng.integers(len(cases))]
            if rng.random() < 0.7:  # centre most patches on a lesion
                points = np.argwhere(labels > 0)
                centre = points[rng.integers(len(points))]
            else:
                centre = rng.integers(size // 2, np.array(labels.shape) - size // 2)
            lo = np.clip(centre - size // 2, 0, np.array(labels.shape) - size)
            box = tuple(slice(a, a + size) for a in lo)
            inner = tuple(slice(a + margin, a + size - margin) for a in lo)
            batch_x.append(image[(slice(None), *box)])
            batch_y.append(labels[inner])
        x = torch.from_numpy(np.stack(batch_x))
        y = torch.from_numpy(np.stack(batch_y)).long()
        loss = F.cross_entropy(model(x), y, weight=weights)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        steps += 1
    print(f"trained {arch} for {steps} steps ({seconds:.0f} s), last loss {loss.item():.3f}")
    save_model(
        model.eval(),
        path,
        modalities=["T1-like", "T2-like"],
        class_names=dict(CLASSES),
        regions={"any lesion": [1, 2]},
        normalization=spec,
        description=f"{arch} trained for {seconds:.0f} s on phantom cases, for screenshots only",
    )
    return str(path)


def pump(seconds: float = 0.3) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def wait(widget, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while widget.runner.running and time.monotonic() < end:
        pump(0.05)
    pump(0.5)


def only_visible(viewer, names) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names


DOCKS: list = []


def show_only_dock(viewer, dock) -> None:
    """One dock at a time, so each screenshot shows its widget at a readable size."""
    if dock not in DOCKS:
        DOCKS.append(dock)
    for other in DOCKS:
        other.setVisible(other is dock)
    pump()


def shoot(viewer, path: Path) -> None:
    pump(0.5)
    viewer.window.screenshot(path=str(path), flash=False, canvas_only=False)
    print(f"saved {path}")


def lesion_slice(truth: np.ndarray) -> tuple[int, tuple[int, int, int]]:
    """The axial slice with the most lesion voxels and a voxel inside the largest lesion on it."""
    z = int(np.argmax((truth > 0).sum(axis=(1, 2))))
    points = np.argwhere(truth[z] == 2)
    if not len(points):
        points = np.argwhere(truth[z] > 0)
    y, x = points[len(points) // 2]
    return z, (z, int(y), int(x))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(REPO / "docs" / "screenshots"))
    parser.add_argument("--train-seconds", type=float, default=45.0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="autofocus-shots-"))
    import os

    os.environ.setdefault("NAPARI_AUTOFOCUS_CONFIG_DIR", str(work / "config"))  # keep the user's recent list
    models = [str(e.path) for e in bundled_models()][:2]
    fallbacks = [("afn2_phantom", "AFN2", 0), ("basic_phantom", "BASIC", 1)]
    for stem, arch, seed in fallbacks[len(models) :]:  # Compare needs two models
        models.append(train_model(work / f"{stem}.safetensors", arch, args.train_seconds, seed=seed))

    with display_available():
        import napari

        viewer = napari.Viewer(title="napari-autofocus", show=True)
        viewer.window._qt_window.resize(1600, 1000)
        viewer.open_sample(PLUGIN, "phantom")
        truth = np.asarray(viewer.layers["phantom_09000 ground truth"].data)
        z, voxel = lesion_slice(truth)
        viewer.dims.ndisplay = 2
        viewer.dims.set_point(0, viewer.layers["phantom_09000 ground truth"].data_to_world(voxel)[0])
        name = Path(models[0]).name.removesuffix(".safetensors")

        dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
        segment.picker.set_model_file(models[0])
        segment.probabilities.setChecked(True)
        segment.run()
        wait(segment)
        only_visible(viewer, {"phantom_09000 [T1-like]", f"{name} labels"})
        viewer.reset_view()
        show_only_dock(viewer, dock)
        shoot(viewer, out / "segment.png")

        dock, explorer = viewer.window.add_plugin_dock_widget(PLUGIN, "Attention explorer")
        last = list(explorer.result.attention)[-1]
        explorer.set_checked(explorer.layer_list, sorted({"AF1", last}))
        explorer.classes_combo.setCurrentText("phantom_09000 ground truth")
        only_visible(viewer, {n.name for n in viewer.layers if n.name.startswith(f"{last} · r=")})
        viewer.cursor.position = tuple(viewer.layers[f"{name} labels"].data_to_world(voxel))
        explorer.show_voxel(voxel)
        show_only_dock(viewer, dock)
        shoot(viewer, out / "explorer.png")

        only_visible(viewer, {f"{last} · arg-max rate", "phantom_09000 [T1-like]"})
        viewer.layers[f"{last} · arg-max rate"].opacity = 0.7
        shoot(viewer, out / "explorer_argmax.png")

        dock, counter = viewer.window.add_plugin_dock_widget(PLUGIN, "Counterfactuals")
        counter.layer_combo.setCurrentText(last)
        counter.mode_combo.setCurrentIndex(1)  # only the smallest rate
        counter.run()
        wait(counter)
        only_visible(viewer, {"phantom_09000 [T1-like]", f"{name} changed voxels"})
        show_only_dock(viewer, dock)
        shoot(viewer, out / "counterfactuals.png")

        explorer.set_checked(explorer.layer_list, [])
        dock, compare = viewer.window.add_plugin_dock_widget(PLUGIN, "Compare models")
        for path in models:
            compare.add_model_file(path)
        compare.run()
        wait(compare)
        keep = {"phantom_09000 ground truth", "model disagreement"} | {
            layer.name for layer in viewer.layers if layer.name.endswith("(compare)")
        }
        for layer in list(viewer.layers):
            if layer in viewer.layers and layer.name not in keep and layer.name != "phantom_09000 [T1-like]":
                viewer.layers.remove(layer)
        only_visible(viewer, keep)
        viewer.reset_view()
        show_only_dock(viewer, dock)
        shoot(viewer, out / "compare.png")

        from napari_autofocus.widgets.compare import grid_of

        grid_of(viewer).enabled = False
        dock, export = viewer.window.add_plugin_dock_widget(PLUGIN, "Export")
        export.result_combo.setCurrentText(f"{name} (compare)")
        export.folder.setText(str(work / "export"))
        export.export()
        only_visible(viewer, {"phantom_09000 [T1-like]", f"{name} (compare)"})
        show_only_dock(viewer, dock)
        shoot(viewer, out / "export.png")
        viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
