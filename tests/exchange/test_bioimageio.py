"""bioimage.io packages: bioimage.io's own tools accept them, tile them exactly, and they load back.

Exports of the bundled brain models are made once per module (a few seconds each); the tests read
them. ``bioimageio.core.test_model`` is bioimage.io's validator: it reproduces the test outputs with
both weight formats and runs inputs of three sizes and two batch sizes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_autofocus.errors import AutofocusError, CheckpointError
from napari_autofocus.exchange.bioimageio_package import export_bioimageio, halo_of
from napari_autofocus.exchange.exchange_input import read_scan, sample_for
from napari_autofocus.exchange.packaged_network import OUTSIDE, PackagedNetwork
from napari_autofocus.inference.predictor import preprocess
from napari_autofocus.nets.checkpoints import load_model, save_model
from napari_autofocus.nets.networks import build_network

pytest.importorskip("bioimageio.core")
MODELS = Path(__file__).resolve().parents[2] / "sample_data" / "models"


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("packages")
    return {
        name: export_bioimageio(MODELS / f"{name}.safetensors", out)
        for name in ("AFN6_brain", "BASIC_brain", "DM_brain")
    }


def _normalised_sample(card) -> np.ndarray:
    raw, spacing = read_scan(sample_for(card.in_channels)[0])
    return preprocess(raw, spacing, card.normalization, card.target_spacing).image


def _failures(summary) -> list[str]:
    return [f"{d.name}: {[e.msg[:300] for e in d.errors]}" for d in summary.details if d.status != "passed"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["AFN6_brain", "BASIC_brain", "DM_brain"])
def test_bioimageio_test_model_passes(packages, name):
    from bioimageio.core import test_model

    summary = test_model(packages[name])
    assert summary.status == "passed", _failures(summary)
    tested = {d.name for d in summary.details}
    for weights in ("pytorch_state_dict", "torchscript"):
        assert f"Reproduce test outputs from test inputs ({weights})" in tested


def test_package_describes_geometry_attention_and_provenance(packages):
    from bioimageio.spec import load_description

    model = load_description(packages["AFN6_brain"])
    net, card = load_model(MODELS / "AFN6_brain.safetensors")
    assert [t.id for t in model.outputs] == ["labels", "probabilities"] + [f"af{i}" for i in range(1, 7)]
    scan = model.inputs[0]
    assert [str(a.id) for a in scan.axes] == ["batch", "channel", "z", "y", "x"]
    assert scan.axes[2].size.min == net.receptive_field == 173  # (RF - 1) / 2 halo on each side
    assert [a.scale for a in scan.axes[2:]] == card.spacing
    assert scan.pad.value == OUTSIDE
    halo = model.outputs[2].axes[2].halo
    assert halo == halo_of(net) == 86
    assert [str(c) for c in model.outputs[2].axes[1].channel_names] == [
        "rate_2",
        "rate_6",
        "rate_10",
        "rate_14",
    ]
    assert [str(c) for c in scan.axes[1].channel_names][0].startswith("T1")
    assert "1805.08403" in str(model.cite[0].url)
    assert str(model.license) == "MIT"
    assert model.config.model_extra["napari-autofocus"]["card"]["arch"] == "AFN6"
    with zipfile.ZipFile(packages["AFN6_brain"]) as archive:
        readme = archive.read("README.md").decode()
        assert "## Validation" in readme and "173" in readme
        state = torch.load(archive.open("weights.pt"), weights_only=True)  # data, never code
    assert all(k.startswith("outputs.net.") for k in state)


def test_torchscript_equals_state_dict_at_two_sizes(packages):
    with zipfile.ZipFile(packages["AFN6_brain"]) as archive:
        source = archive.read("architecture.py").decode()
        state = torch.load(archive.open("weights.pt"), weights_only=True)
        scripted = torch.jit.load(archive.open("weights_torchscript.pt"))
    namespace: dict = {}
    exec(compile(source, "architecture.py", "exec"), namespace)  # the file our own export wrote
    _, card = load_model(MODELS / "AFN6_brain.safetensors")
    eager = namespace["PackagedNetwork"](card.arch, card.in_channels, card.num_classes, card.options, 0.0)
    eager.load_state_dict(state)
    eager.eval()
    image = _normalised_sample(card)
    for size in ((30, 36, 33), (41, 29, 45)):
        x = torch.full((1, 4, size[0] + 6, size[1] + 4, size[2] + 2), OUTSIDE)
        x[:, :, 3 : 3 + size[0], 2 : 2 + size[1], 1 : 1 + size[2]] = torch.from_numpy(
            image[:, 30 : 30 + size[0], 40 : 40 + size[1], 30 : 30 + size[2]]
        )
        with torch.inference_mode():
            a, b = eager(x), scripted(x)
        assert len(a) == len(b) == 8
        for left, right in zip(a, b, strict=True):
            assert left.shape == x.shape[:1] + left.shape[1:2] + x.shape[2:]
            torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5, equal_nan=True)
        assert torch.isnan(a[2][:, :, :3]).all() and (a[0][:, :, :3] == 0).all()  # outside the scan


def test_architecture_source_runs_without_this_project(packages, tmp_path):
    """The package's architecture.py needs torch and numpy only: napari_autofocus is blocked."""
    with zipfile.ZipFile(packages["BASIC_brain"]) as archive:
        (tmp_path / "architecture.py").write_bytes(archive.read("architecture.py"))
    script = (
        "import sys; sys.modules['napari_autofocus'] = None\n"
        "import torch, architecture\n"
        "for arch in ['BASIC', 'AFN6', 'ASPP_C', 'ASPP_S', 'DM']:\n"
        "    net = architecture.PackagedNetwork(arch, 2, 3, {})\n"
        "    out = net.eval()(torch.zeros(1, 2, 30, 30, 30))\n"
        "    assert out[0].shape == (1, 1, 30, 30, 30), (arch, out[0].shape)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_packaged_network_is_the_network_over_the_whole_scan():
    """Whatever the outside padding, the package computes what our engine computes with --no-crop."""
    net, card = load_model(MODELS / "AFN6_brain.safetensors")
    packaged = PackagedNetwork(card.arch, card.in_channels, card.num_classes, card.options).eval()
    packaged.outputs.net.load_state_dict(net.state_dict())
    image = _normalised_sample(card)[:, 20:70, 30:90, 20:70]
    engine = engine_without_crop(net, card, image)
    x = torch.full((1, 4, 60, 70, 56), OUTSIDE)
    x[:, :, 4:54, 6:66, 3:53] = torch.from_numpy(image)
    with torch.inference_mode():
        labels, probabilities, *attention = packaged(x)
    assert np.array_equal(labels[0, 0, 4:54, 6:66, 3:53].numpy(), engine.labels)
    np.testing.assert_allclose(probabilities[0, :, 4:54, 6:66, 3:53].numpy(), engine.probabilities, atol=1e-4)
    np.testing.assert_allclose(
        attention[5][0, :, 4:54, 6:66, 3:53].numpy(), engine.attention["AF6"], atol=2e-3
    )


def engine_without_crop(net, card, image):
    """Our engine's whole-mode outputs over the whole normalised scan (``predict --no-crop``)."""
    from napari_autofocus.inference.engine import predict_volume
    from napari_autofocus.inference.normalization import padding_value

    return predict_volume(
        net,
        image,
        crop=False,
        probabilities=True,
        attention=True,
        attention_dtype=np.float32,
        pad_value=padding_value(card.normalization),
    )


def _tiled(package: Path, image: np.ndarray, block: int):
    from bioimageio.core import Sample, Tensor, predict

    sample = Sample(
        members={"scan": Tensor(image[None], dims=("batch", "channel", "z", "y", "x"))}, stat={}, id="s"
    )
    shape = {"scan": {"batch": 1, "channel": image.shape[0], "z": block, "y": block, "x": block}}
    out = predict(model=str(package), inputs=sample, input_block_shape=shape)
    return {k: np.asarray(v.data) for k, v in out.members.items()}


@pytest.mark.slow
def test_bioimageio_tiling_gives_the_whole_scan_labels(packages, tmp_path):
    """bioimage.io's own tiling (blocks with the declared halo) equals our whole-volume outputs:
    BASIC_brain on the brain sample, and an autofocus network whose dilated layers zero-pad."""
    net, card = load_model(MODELS / "BASIC_brain.safetensors")
    image = _normalised_sample(card)
    whole = engine_without_crop(net, card, image)
    tiled = _tiled(packages["BASIC_brain"], image, block=29 + 16 * 2)
    assert np.array_equal(tiled["labels"][0, 0], whole.labels)

    # an autofocus network that labels the brain: BASIC_brain's kernels, its last two dilated
    # layers as autofocus layers at rates 1 and 3 (untrained attention)
    torch.manual_seed(0)
    small = build_network("AFN2", 4, 4, channels=card.options["channels"], dilations=(1, 3))
    own = small.state_dict()
    small.load_state_dict(
        {k: v for k, v in net.state_dict().items() if k in own and own[k].shape == v.shape}, strict=False
    )
    assert small.margin < halo_of(small)  # the autofocus layers pad: tiles are exact only with the halo
    path = tmp_path / "small_afn2.safetensors"
    save_model(small, path, card.replace(arch="AFN2", options=small.options, dilations=[1, 3], metrics={}))
    package = export_bioimageio(path, tmp_path)
    small, small_card = load_model(path)
    whole = engine_without_crop(small, small_card, image)
    tiled = _tiled(package, image, block=33 + 16 * 2)  # 65^3 blocks keep 33^3 each: 36 blocks
    assert np.array_equal(tiled["labels"][0, 0], whole.labels)
    assert len(np.unique(whole.labels)) == 3
    np.testing.assert_allclose(tiled["probabilities"][0], whole.probabilities, atol=1e-5)
    for i, name in enumerate(("AF1", "AF2"), start=1):
        np.testing.assert_allclose(tiled[f"af{i}"][0], whole.attention[name], atol=1e-5)


def test_package_loads_back_with_the_same_labels(packages, tmp_path):
    from napari_autofocus.app.model_library import describe, model_name

    path = packages["DM_brain"]
    imported, card = load_model(path)
    original, original_card = load_model(MODELS / "DM_brain.safetensors")
    assert card.arch == "DM" and card.class_names == original_card.class_names
    assert "bioimage.io package" in card.provenance["imported_from"]
    for a, b in zip(imported.state_dict().values(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert describe(path).modalities == original_card.modalities  # the plugin's menu reads the card
    assert model_name(path) == "DM_brain"
    image = _normalised_sample(card)[:, 20:80, 30:90, 20:80]
    assert np.array_equal(
        engine_without_crop(imported, card, image).labels, engine_without_crop(original, card, image).labels
    )


def _rewritten(source: Path, target: Path, change) -> Path:
    """A copy of the zip ``source`` whose members pass through ``change(name, data)`` (None drops one)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            data = change(item.filename, old.read(item))
            if data is not None:
                new.writestr(item, data)
    return target


def test_damaged_or_foreign_packages_are_refused(packages, tmp_path):
    import yaml

    source = packages["BASIC_brain"]

    def damage_weights(name, data):
        return data[:-64] + bytes(64) if name == "weights.pt" else data

    def forget_config(name, data):
        if name != "rdf.yaml":
            return None
        rdf = yaml.safe_load(data)
        rdf["config"] = {}
        return yaml.safe_dump(rdf)

    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(_rewritten(source, tmp_path / "tampered.bioimageio.zip", damage_weights))
    with pytest.raises(CheckpointError, match="did not export"):
        load_model(_rewritten(source, tmp_path / "foreign.zip", forget_config))


def test_export_keeps_what_it_did_not_write(tmp_path):
    model = MODELS / "BASIC_brain.safetensors"
    target = tmp_path / "BASIC_brain.bioimageio.zip"
    target.write_bytes(b"a user's file")
    with pytest.raises(AutofocusError, match="--force"):
        export_bioimageio(model, tmp_path)
    with pytest.raises(AutofocusError, match="not a package napari-autofocus exported"):
        export_bioimageio(model, tmp_path, force=True)
    assert target.read_bytes() == b"a user's file"
    written = export_bioimageio(model, tmp_path, name="mine")
    assert export_bioimageio(model, tmp_path, name="mine", force=True) == written  # ours: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BASIC_brain.bioimageio.zip", "mine.bioimageio.zip"]


def test_export_cli(tmp_path, golden):
    """The authors' checkpoints export too (test tensors from the brain sample: 4 channels); a
    second export does not replace the first."""
    from src_training.cli import main

    argv = [
        "export",
        "--format",
        "bioimageio",
        str(golden / "AFN1_390_checkpoint.pth.tar"),
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert load_model(tmp_path / "AFN1_390_checkpoint.bioimageio.zip")[1].arch == "AFN1"
    assert main(argv) == 2


def test_missing_tools_are_named(monkeypatch):
    from napari_autofocus.exchange import formats

    monkeypatch.setattr(formats, "_found", lambda module: module != "monai")
    with pytest.raises(AutofocusError, match=r"needs monai.*napari-autofocus\[export\]"):
        formats.check_format("monai-bundle")
    assert importlib.util.find_spec("bioimageio.spec") is not None
