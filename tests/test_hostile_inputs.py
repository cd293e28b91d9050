"""Small files a careless or hostile user can open: bounded before anything is allocated, and every
problem one message of the project's own error type (CLI, reader and library alike)."""

import contextlib
import gzip
import json
import math
import re
import struct
import time
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from phantom_configs import PHANTOM_40, tiny_train_argv

from napari_autofocus._reader import read_nifti
from napari_autofocus.errors import AutofocusError, CheckpointError, DatasetError, NiftiError
from napari_autofocus.inference.predictor import PredictOptions, Scan, predict
from napari_autofocus.io.nifti import load_nifti
from napari_autofocus.nets import build_network, load_model, save_model
from napari_autofocus.nets import checkpoints as checkpoint_module
from napari_autofocus.nets.card import read_header
from napari_autofocus.nets.checkpoints import file_sha256
from src_training.cli import main
from src_training.data import open_dataset
from src_training.phantom_cases import write_dataset

DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8, 512: np.uint16}


def raw_nifti(path, dims=(4, 4, 4), datatype=16, data=None, version=1, **fields):
    """A NIfTI file written field by field, past nibabel's own checks (as a broken tool might)."""
    header = nib.Nifti1Header() if version == 1 else nib.Nifti2Header()
    raw = header._structarr
    raw["dim"] = [len(dims), *dims, *([1] * (7 - len(dims)))]
    raw["datatype"] = datatype
    raw["bitpix"] = 8 * np.dtype(DTYPES.get(datatype, np.uint8)).itemsize
    raw["pixdim"] = [1, 1, 1, 1, 1, 1, 1, 1]
    raw["vox_offset"] = 352 if version == 1 else 544
    raw["sform_code"], raw["qform_code"] = 1, 0
    raw["srow_x"], raw["srow_y"], raw["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]
    raw["scl_slope"], raw["scl_inter"] = 1, 0
    for key, value in fields.items():
        raw[key] = value
    if data is None:
        count = math.prod(dims) if math.prod(dims) < 10**6 else 8
        data = np.ones(count, DTYPES.get(datatype, np.uint8)).tobytes()
    blob = header.binaryblock + b"\0" * 4 + data
    path.write_bytes(gzip.compress(blob) if path.name.endswith(".gz") else blob)
    return path


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(build_network("AFN1", 2, 3, channels=(4,) * 8), path, modalities=["T1-like", "T2-like"])
    return path


def _two_channel_scan(path, shape=(24, 24, 24), zoom=1.0, affine=None):
    data = np.zeros((*shape, 2), np.float32)
    data[...] = np.random.default_rng(0).normal(100, 10, size=data.shape)
    nib.save(nib.Nifti1Image(data, np.diag([zoom, zoom, zoom, 1.0]) if affine is None else affine), str(path))
    return path


def _predict(model_file, scan, out, *extra):
    return main(["predict", "--model", str(model_file), "--input", str(scan), "--out", str(out), *extra])


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for word in words:
        assert word in err, err
    return err


# -- item 4: label values --------------------------------------------------------------------------------


def test_a_huge_label_value_is_refused_at_once(tmp_path, capsys):
    ds = write_dataset(tmp_path / "ds", 2, 0, PHANTOM_40, layout="msd")
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"]["300000000"] = "huge"
    (ds / "dataset.json").write_text(json.dumps(meta))
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=r"value 300000000 is outside 0\.\.999"):
        open_dataset(ds)
    argv = ["train", "--data", str(ds), "--out", str(tmp_path / "run"), "--epochs", "1", "--device", "cpu"]
    assert main(argv) == 2
    _one_line_error(capsys, "outside 0..999")
    assert time.perf_counter() - start < 30
    meta["labels"] = {"0": "background", "1": [1, 10**12]}  # a region too
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="outside 0..999"):
        open_dataset(ds)


# -- item 5: forged model cards ----------------------------------------------------------------------------


def forge(path, target, **card_changes):
    """A copy of model file ``path`` whose card is changed, with the content hash recomputed."""
    header, offset = read_header(path)
    meta = header["__metadata__"]
    card = json.loads(meta["model_card"])
    for key, value in card_changes.items():
        if key in ("channels", "dilations"):
            card["options"][key] = value
        else:
            card[key] = value
    meta["model_card"] = json.dumps(card)
    meta["sha256"] = file_sha256(meta["content_sha256"], meta["model_card"])
    text = json.dumps(header).encode()
    target.write_bytes(struct.pack("<Q", len(text)) + text + path.read_bytes()[offset:])
    return target


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"in_channels": 10**6}, "in_channels"),
        ({"in_channels": 10**7}, "in_channels"),
        ({"num_classes": 10**8}, "num_classes"),
        ({"channels": [10**5] * 8}, "channels must be integers from 1 to 1024"),
        ({"dilations": [2, 6, 10, 10**5]}, "dilations"),
        ({"in_channels": 1000}, "does not match"),  # in range, but not what the file's weights are
        ({"channels": [1024] * 8}, "does not match"),
    ],
)
def test_a_forged_card_is_refused_before_anything_is_allocated(
    tmp_path, model_file, changes, words, monkeypatch
):
    forged = forge(model_file, tmp_path / "forged.safetensors", **changes)
    devices = []
    real_build = checkpoint_module.build_network

    def recording_build(*args, **kwargs):
        devices.append(torch.get_default_device().type)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "build_network", recording_build)
    with pytest.raises(CheckpointError, match=words):
        load_model(forged)
    assert set(devices) <= {"meta"}  # at most a shape-only network was built: no weights allocated


def test_deeply_nested_json_in_a_card_or_header_is_one_error(tmp_path, model_file, capsys):
    from napari_autofocus.app.model_library import describe

    deep = "[" * 100_000 + "]" * 100_000
    forged_card = tmp_path / "card.safetensors"
    header, offset = read_header(model_file)
    header["__metadata__"]["model_card"] = deep
    text = json.dumps(header).encode()
    forged_card.write_bytes(struct.pack("<Q", len(text)) + text + model_file.read_bytes()[offset:])
    forged_header = tmp_path / "header.safetensors"
    forged_header.write_bytes(struct.pack("<Q", len(deep)) + deep.encode())
    for path in (forged_card, forged_header):
        with pytest.raises(CheckpointError):
            load_model(path)
        with pytest.raises(AutofocusError):
            describe(path)  # the plugin's model list
        scan = _two_channel_scan(tmp_path / "scan.nii.gz")
        assert (
            main(["predict", "--model", str(path), "--input", str(scan), "--out", str(tmp_path / "o")]) == 2
        )
        _one_line_error(capsys, path.name)


# -- item 6: headers, affines, datatypes ------------------------------------------------------------------


NAN4 = [float("nan")] * 4
BROKEN_HEADERS = {
    "nan_sform": (dict(srow_x=NAN4), "NaN or infinite"),
    "nan_qform": (dict(sform_code=0, qform_code=1, quatern_b=float("nan")), "NaN or infinite"),
    "zero_scale": (dict(srow_x=[0, 0, 0, 0]), "voxel sizes"),
    "zero_affine": (dict(srow_x=[0] * 4, srow_y=[0] * 4, srow_z=[0] * 4), "voxel sizes"),
    "dims_32767": (dict(dim=[3, 32767, 32767, 32767, 1, 1, 1, 1]), "voxels"),
    "datatype_1": (dict(datatype=1, bitpix=1), "datatype 1 (binary"),
    "datatype_1536": (dict(datatype=1536, bitpix=128), "datatype 1536 (float128)"),
    "nan_scl_inter": (dict(scl_inter=float("nan")), "scl_inter"),
    "rgb24": (dict(datatype=128, bitpix=24), "datatype 128 (RGB24)"),
    "rgba32": (dict(datatype=2304, bitpix=32), "datatype 2304 (RGBA32)"),
    "complex": (dict(datatype=32, bitpix=64), "datatype 32 (complex64)"),  # item 10: no silent real part
    "huge_spacing": (dict(srow_x=[1e30, 0, 0, 0]), "voxel sizes"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_HEADERS))
def test_a_broken_header_is_one_niftierror_in_load_predict_and_the_reader(
    name, tmp_path, model_file, capsys, monkeypatch
):
    fields, words = BROKEN_HEADERS[name]
    path = raw_nifti(tmp_path / f"{name}.nii.gz", dims=(8, 8, 8, 2), **fields)
    with pytest.raises(NiftiError, match=re.escape(words)):
        load_nifti(path)
    assert _predict(model_file, path, tmp_path / "out") == 2
    _one_line_error(capsys, path.name, words)
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    assert read_nifti(str(path)) == [(None,)] and len(shown) == 1 and words in shown[0]


def test_nifti2_dims_of_ten_to_the_53_are_refused(tmp_path):
    path = raw_nifti(tmp_path / "big.nii", dims=(10**18, 10**18, 10**17), version=2)
    with pytest.raises(NiftiError, match="voxels; at most"):
        load_nifti(path)


# -- item 7: malformed dataset.json beside an image -------------------------------------------------------


@pytest.mark.parametrize(
    "meta, words",
    [([1, 2, 3], "expected a JSON object, got a list"), ({"modality": ["T1", "T2"]}, "'modality' must map"),
     ({"modality": "T1"}, "'modality' must map"), ({"channel_names": 5}, "'channel_names' must map")],
)  # fmt: skip
def test_a_malformed_dataset_json_is_one_dataseterror(tmp_path, model_file, meta, words, capsys, monkeypatch):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    scan = _two_channel_scan(tmp_path / "imagesTr" / "case.nii.gz")
    with pytest.raises(DatasetError, match=words):
        load_nifti(scan)
    assert _predict(model_file, scan, tmp_path / "out") == 2
    _one_line_error(capsys, "dataset.json", words)
    shown = []
    monkeypatch.setattr("napari.utils.notifications.show_error", shown.append)
    assert read_nifti(str(scan)) == [(None,)] and words in shown[0]


# -- item 8: thin volumes --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 5), (5, 1, 1)])
def test_one_voxel_and_thin_ras_volumes_are_predicted(tmp_path, model_file, shape):
    scan = _two_channel_scan(tmp_path / "thin.nii.gz", shape=shape)
    assert _predict(model_file, scan, tmp_path / "out", "--attention") == 0
    labels = nib.load(tmp_path / "out" / "thin.nii.gz")
    assert labels.shape == shape and np.allclose(labels.affine, np.eye(4))
    assert nib.load(tmp_path / "out" / "thin_AF1_attention.nii.gz").shape == (*shape, 4)


def test_the_engine_accepts_flipped_views_with_one_voxel_axes():
    model = build_network("AFN1", 2, 3, channels=(4,) * 8)
    image = np.random.default_rng(0).normal(size=(2, 1, 1, 5)).astype(np.float32)[:, ::-1, ::-1, ::-1]
    from napari_autofocus.inference import predict_volume

    for mode in ("whole", "tiled"):
        assert predict_volume(model, image, mode=mode, device="cpu").labels.shape == (1, 1, 5)


# -- item 9: resampling to the model's grid ---------------------------------------------------------------


def _spacing_model(tmp_path, target):
    path = tmp_path / f"resampling_{target}.safetensors"
    model = build_network("AFN1", 2, 3, channels=(4,) * 8)
    save_model(model, path, modalities=["T1-like", "T2-like"], target_spacing=[target] * 3)
    return path


def test_a_scan_in_metres_is_refused_with_the_reason(tmp_path, capsys):
    scan = _two_channel_scan(tmp_path / "metres.nii.gz", shape=(24, 24, 24), zoom=0.001)
    assert _predict(_spacing_model(tmp_path, 1.0), scan, tmp_path / "out") == 2
    _one_line_error(capsys, "metres instead of mm")


def test_resampling_past_the_memory_budget_is_refused_before_it_allocates(tmp_path, capsys):
    scan = _two_channel_scan(tmp_path / "scan.nii.gz", shape=(24, 24, 24))
    assert _predict(_spacing_model(tmp_path, 0.001), scan, tmp_path / "out") == 2
    _one_line_error(capsys, "GiB as float32", "check the scan's voxel sizes")


def test_resampling_that_grows_the_volume_a_lot_is_warned_about(tmp_path, capsys):
    scan = _two_channel_scan(tmp_path / "scan.nii.gz", shape=(8, 8, 8))
    assert _predict(_spacing_model(tmp_path, 0.35), scan, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "makes the volume 24x larger (23x23x23)" in out
    info = json.loads((tmp_path / "out" / "scan_prediction.json").read_text())
    assert any("24x larger" in w for w in info["warnings"])


# -- item 10: complex, RGB and bool arrays from Python ------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, np.dtype([("r", "u1"), ("g", "u1"), ("b", "u1")])])
def test_complex_rgb_and_bool_arrays_are_refused_with_the_supported_types(dtype):
    model = build_network("AFN1", 2, 3, channels=(4,) * 8)
    from napari_autofocus.nets.checkpoints import card_for

    card = card_for(model, None)
    with pytest.raises(AutofocusError, match="are not supported; expected real-valued intensities"):
        predict(
            model, card, Scan(np.zeros((2, 8, 8, 8), dtype), (1.0, 1.0, 1.0)), PredictOptions(device="cpu")
        )


# -- item 11: what is recorded and said ------------------------------------------------------------


def test_the_cards_geometry_is_recomputed_from_the_network(tmp_path, model_file):
    honest = load_model(model_file)[1]
    forged = forge(model_file, tmp_path / "forged.safetensors", receptive_field=500, margin=3)
    model, card = load_model(forged)
    assert (card.receptive_field, card.margin) == (model.receptive_field, model.margin)
    assert (card.receptive_field, card.margin) == (honest.receptive_field, honest.margin)
    with pytest.raises(CheckpointError, match="receptive_field"):
        load_model(forge(model_file, tmp_path / "huge.safetensors", receptive_field=10**9))


def test_evaluate_never_claims_training_cases_by_name_alone(tmp_path, capsys):
    ds = write_dataset(tmp_path / "ds", 3, 0, PHANTOM_40, layout="msd")
    run = tmp_path / "run"
    argv = tiny_train_argv(
        ds, run, tmp_path / "cache", "--arch", "BASIC", "--epochs", "1", "--val-every", "0"
    )
    assert main(argv) == 0
    model = run / "model.safetensors"
    evaluate = ["evaluate", "--model", str(model), "--cases", "all", "--device", "cpu"]
    assert main([*evaluate, "--data", str(ds), "--out", str(tmp_path / "e1")]) == 0
    assert "were used to train this model" in capsys.readouterr().out
    foreign = write_dataset(tmp_path / "foreign", 3, 0, PHANTOM_40, layout="msd")  # the same case names
    meta = json.loads((foreign / "dataset.json").read_text())
    meta["name"] = json.loads((ds / "dataset.json").read_text())["name"]  # the same name, other data
    (foreign / "dataset.json").write_text(json.dumps(meta))
    for entry in meta["training"]:  # and different sizes, as other scans have
        for key in ("image", "label"):
            path = foreign / entry[key]
            img = nib.load(path)
            nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine), str(path))
    assert main([*evaluate, "--data", str(foreign), "--out", str(tmp_path / "e2")]) == 0
    assert "used to train" not in capsys.readouterr().out


def test_the_memory_budget_never_changes_labels_and_attention_by_at_most_one_float16_step():
    from napari_autofocus.inference import predict_volume

    model = build_network("AFN1", 2, 3, channels=(4,) * 8)
    image = np.random.default_rng(3).normal(size=(2, 40, 36, 32)).astype(np.float32)
    kwargs = dict(device="cpu", attention=True, probabilities=True)
    big = predict_volume(model, image, memory_budget_gib=4, **kwargs)
    small = predict_volume(model, image, memory_budget_gib=0.1, spill_dir=None, **kwargs)
    np.testing.assert_array_equal(big.labels, small.labels)
    a, b = big.attention["AF1"].astype(np.float32), small.attention["AF1"].astype(np.float32)
    step = np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(a - b) <= step + 1e-12)


# -- the property: any header, any dataset.json shape --------------------------------------------------


def mostly(sane, odd):
    """``sane`` five times in six: most headers are nearly right, as real broken files are."""
    return st.one_of(*[sane] * 5, odd)


ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=32)
SCALES = st.lists(st.floats(0.25, 3, width=32), min_size=3, max_size=3)
FIELDS = st.fixed_dictionaries(
    {
        "dims": mostly(
            st.lists(st.integers(1, 10), min_size=3, max_size=4).map(tuple),
            st.lists(st.integers(0, 32767), min_size=1, max_size=7).map(tuple),
        ),
        "datatype": mostly(
            st.sampled_from([2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280]),
            st.sampled_from([0, 1, 32, 128, 1536, 1792, 2048, 2304, 7, -3]),
        ),
        "pixdim": mostly(st.just([1.0] * 8), st.lists(ANY_FLOAT, min_size=8, max_size=8)),
        "srow": mostly(
            SCALES.map(lambda z: [z[0], 0, 0, -5, 0, -z[1], 0, 3, 0, 0, z[2], 1]),
            st.lists(st.floats(-1e3, 1e3, width=32) | st.just(float("nan")), min_size=12, max_size=12),
        ),
        "sform_code": mostly(st.just(1), st.integers(0, 4)),
        "qform_code": st.integers(0, 4),
        "quatern": st.lists(st.floats(-2, 2, width=32) | st.just(float("nan")), min_size=3, max_size=3),
        "scl_slope": mostly(st.sampled_from([0.0, 1.0, 2.5]), ANY_FLOAT),
        "scl_inter": mostly(st.sampled_from([0.0, -10.0]), ANY_FLOAT),
        "intent_code": mostly(st.just(0), st.integers(-5, 3000)),
        "truncate": mostly(st.just(False), st.just(True)),
    }
)
DATASET_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["modality", "channel_names", "labels", "0", "1", "name", "x"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def _write_random(path, f):
    dims = f["dims"]
    fields = {key: f[key] for key in ("datatype", "pixdim", "sform_code", "qform_code", "scl_slope",
                                      "scl_inter", "intent_code")}  # fmt: skip
    fields.update(zip(("quatern_b", "quatern_c", "quatern_d"), f["quatern"], strict=True))
    fields.update(srow_x=f["srow"][:4], srow_y=f["srow"][4:8], srow_z=f["srow"][8:])
    padded = list(dims)[:7]
    fields["dim"] = [len(padded), *padded, *([1] * (7 - len(padded)))]
    count = math.prod(dims) if math.prod(dims) < 20_000 else 64
    data = np.random.default_rng(0).integers(0, 4, count * 8, dtype=np.uint8).tobytes()
    if f["truncate"]:
        data = data[: len(data) // 3]
    return raw_nifti(path, dims=dims[:3] if len(dims) >= 3 else (1, 1, 1), data=data, **fields)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=FIELDS, meta=st.one_of(st.none(), st.none(), DATASET_JSON))
def test_any_header_and_any_dataset_json_either_reads_or_is_the_projects_error(
    tmp_path_factory, fields, meta
):
    folder = tmp_path_factory.mktemp("random")
    (folder / "imagesTr").mkdir()
    if meta is not None:  # None: no dataset.json beside the image
        (folder / "dataset.json").write_text(json.dumps(meta))
    path = _write_random(folder / "imagesTr" / "case.nii.gz", fields)
    start = time.perf_counter()
    tracemalloc.start()
    layers = read_nifti(str(path))  # the napari reader: layers, or nothing after one notification
    assert isinstance(layers, list) and layers
    try:
        volume = load_nifti(path)
    except AutofocusError as exc:
        event(f"refused: {type(exc).__name__}")
        volume = None
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 200 * 2**20 and time.perf_counter() - start < 20
    if volume is None:
        return
    model = build_network("BASIC", 1, 2, channels=(2,) * 8)
    from napari_autofocus.nets.checkpoints import card_for

    card = card_for(model, None, target_spacing=[1.0, 1.0, 1.0])
    data = volume.data if volume.data.ndim == 4 else volume.data[None]
    event("read")
    with contextlib.suppress(AutofocusError):
        options = PredictOptions(device="cpu", nonfinite="background", memory_budget_gib=0.5)
        predict(model, card, Scan(data[:1], volume.geometry.spacing), options)
    assert time.perf_counter() - start < 60
