"""Model files: golden reference imports, round trips, integrity checks and refusals."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from repo_paths import GOLDEN

from napari_autofocus.errors import CheckpointError
from napari_autofocus.nets import ARCHITECTURES, build_network, load_model, save_model
from napari_autofocus.nets.card import read_card

needs_golden = pytest.mark.usefixtures("golden")  # skipped without shared/, failed in CI


def _golden(arch: str) -> Path:
    return GOLDEN / f"{arch}_390_checkpoint.pth.tar"


@needs_golden
@pytest.mark.parametrize("arch,ours", [("Basic", "BASIC"), ("AFN1", "AFN1"), ("AFN6", "AFN6")])
def test_golden_reference_checkpoints_reproduce_reference_logits(arch, ours):
    model, card = load_model(_golden(arch))
    assert model.arch == ours and not model.training
    io = np.load(GOLDEN / f"{arch}_io.npz")
    with torch.no_grad():
        logits = model(torch.from_numpy(io["input"]))
    assert logits.shape == (1, 5, 17, 17, 17)
    assert float((logits - torch.from_numpy(io["logits"])).abs().max()) < 1e-4
    assert card.modalities == ["Flair", "T1", "T1c", "T2"]
    assert card.class_names["4"] == "enhancing" and card.regions["core"] == [1, 3, 4]
    assert card.provenance["epoch"] == 390 and card.margin == 14


def _randomized(arch: str) -> torch.nn.Module:
    """A small network with random parameters and BN statistics, so eval outputs are non-trivial."""
    torch.manual_seed(0)
    net = build_network(arch, 2, 3, channels=(3, 3, 4, 4, 4, 4, 5, 5))
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "running_var" in name else torch.randn_like(t) * 0.3)
    return net.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_round_trip_every_architecture(arch, tmp_path):
    net = _randomized(arch)
    size = 51 if arch == "DM" else 31
    x = torch.randn(1, 2, size, size, size)
    path = tmp_path / f"{arch}.safetensors"
    save_model(net, path, modalities=["T1", "T2"], class_names={"0": "bg", "1": "a", "2": "b"})
    loaded, card = load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    assert card.arch == arch and card.options["channels"] == [3, 3, 4, 4, 4, 4, 5, 5]
    assert card.receptive_field == net.receptive_field and card.margin == net.margin
    assert card.autofocus_layers == [g["name"] for g in net.autofocus_geometry()]
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # the temp file was renamed away


def test_card_is_readable_without_torch(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(_randomized("AFN2"), path, description="tiny", spacing=[1.0, 1.0, 1.0])
    card = read_card(path)
    assert (card.arch, card.in_channels, card.num_classes) == ("AFN2", 2, 3)
    assert card.autofocus_layers == ["AF1", "AF2"] and card.dilations == [2, 6, 10, 14]
    code = (
        "import sys; from napari_autofocus.nets.card import read_card; "
        f"c = read_card({str(path)!r}); assert 'torch' not in sys.modules, 'torch imported'; "
        "print(c.description)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "tiny"


def _data_start(path: Path) -> int:
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_tampered_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(_randomized("BASIC"), path)
    data = bytearray(path.read_bytes())
    data[_data_start(path) + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="content hash mismatch: the weights were modified or damaged"):
        load_model(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    save_model(_randomized("BASIC"), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="m.safetensors"):
        load_model(path)
    path.write_bytes(data[:20])
    with pytest.raises(CheckpointError, match="m.safetensors"):
        load_model(path)


def test_not_a_checkpoint_and_arbitrary_pickles_are_refused(tmp_path):
    text = tmp_path / "notes.pth.tar"
    text.write_text("hello, not a model\n")
    with pytest.raises(CheckpointError, match="notes.pth.tar.*expected"):
        load_model(text)
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth.tar"
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(CheckpointError, match="evil.pth.tar"):
        load_model(evil)
    assert not marker.exists()


@needs_golden
def test_hint_arch_mismatch_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="AFN2.*AFN1"):
        load_model(_golden("AFN1"), arch="AFN2")
    path = tmp_path / "basic.safetensors"
    save_model(_randomized("BASIC"), path)
    with pytest.raises(CheckpointError, match="BASIC.*AFN1"):
        load_model(path, arch="AFN1")


@needs_golden
def test_hints_override_card_and_zip_bare_state_dicts_load(tmp_path):
    state = torch.load(_golden("Basic"), map_location="cpu", weights_only=True)["state_dict"]
    bare = {k.removeprefix("module."): v for k, v in state.items()}
    path = tmp_path / "bare.pt"
    torch.save(bare, path)  # zip format, no 'module.' prefix, no wrapper dict
    model, card = load_model(path, arch="Basic", modalities=["a", "b", "c", "d"])
    assert model.arch == "BASIC" and card.modalities == ["a", "b", "c", "d"]


@needs_golden
def test_missing_key_and_wrong_shape_are_refused_without_partial_load(tmp_path):
    state = torch.load(_golden("AFN1"), map_location="cpu", weights_only=True)["state_dict"]
    missing = dict(state)
    del missing["module.layers.2.convatt2.bias"]
    path = tmp_path / "missing.pth.tar"
    torch.save({"state_dict": missing}, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['layer5.conv2.att2.bias'\]"):
        load_model(path)
    wrong = dict(state)
    wrong["module.fc.bias"] = torch.zeros(7)
    torch.save({"state_dict": wrong}, path)
    with pytest.raises(CheckpointError, match="shape mismatch for fc.bias"):
        load_model(path)


def test_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a napari-autofocus model"):
        load_model(path)
    header = json.loads(path.read_bytes()[8 : _data_start(path)])
    assert header["__metadata__"]["format"] == "pt"
