"""The predictor every caller uses: the card's preprocessing, the way back to the scan's grid, and
the warnings when a scan does not match the model."""

import numpy as np
import pytest

from napari_autofocus.inference.predictor import (
    Contract,
    PredictOptions,
    Scan,
    check_channels,
    check_intensities,
    check_phantom,
    check_spacing,
    predict,
    preprocess,
    resample_nearest,
    to_source,
)
from napari_autofocus.io.nifti import PHANTOM_MARK
from napari_autofocus.nets import build_network
from napari_autofocus.nets.card import ModelCard


def _card(**fields):
    base = dict(arch="AFN1", in_channels=2, num_classes=3, modalities=["T1", "T2"])
    return ModelCard(**{**base, **fields})


def _scan(shape=(20, 24, 28), seed=0):
    rng = np.random.default_rng(seed)
    raw = np.zeros((2, *shape), np.float32)
    raw[:, 3:-3, 4:-4, 5:-5] = rng.normal(100, 20, size=(2, shape[0] - 6, shape[1] - 8, shape[2] - 10))
    return raw


def test_nearest_resampling_round_trips_and_keeps_dtype_and_nan():
    labels = np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8)
    up = resample_nearest(labels, (8, 12, 16))
    assert up.dtype == np.int16 and up.shape == (8, 12, 16)
    np.testing.assert_array_equal(resample_nearest(up, (4, 6, 8)), labels)
    maps = np.full((3, 4, 6, 8), np.nan, np.float16)
    maps[:, 1:3] = 1 / 3
    back = resample_nearest(maps, (7, 5, 9))
    assert back.dtype == np.float16 and back.shape == (3, 7, 5, 9)
    assert np.isnan(back[:, 0]).all() and np.isfinite(back[:, 3]).all()


def test_preprocess_resamples_to_the_target_and_scales_the_foreground_box():
    raw = _scan()
    label = (raw[0] > 0).astype(np.int16)
    same = preprocess(raw, (1, 1, 1), None)
    assert not same.resampled and same.foreground_box == ((3, 17), (4, 20), (5, 23))
    coarse = preprocess(raw, (1, 1, 1), None, target_spacing=(2, 2, 2), label=label)
    assert coarse.resampled and coarse.image.shape == (2, 10, 12, 14) and coarse.spacing == (2.0, 2.0, 2.0)
    assert coarse.label.shape == (10, 12, 14) and coarse.source_shape == (20, 24, 28)
    assert coarse.foreground_box == ((1, 9), (2, 10), (2, 12))  # every cell touching the foreground
    inside = coarse.image[:, slice(*coarse.foreground_box[0])]
    assert abs(float(inside[0][coarse.roi[slice(*coarse.foreground_box[0])]].mean())) < 0.1  # z-scored


def test_a_spacing_model_predicts_on_its_grid_and_answers_on_the_scans():
    model = build_network("AFN1", 2, 3, channels=(4,) * 8)
    card = _card(spacing=[2.0, 2.0, 2.0], target_spacing=[2.0, 2.0, 2.0])
    raw = _scan()
    prediction, report = predict(
        model, card, Scan(raw, (1, 1, 1)), PredictOptions(device="cpu", attention=True)
    )
    assert prediction.labels.shape == (20, 24, 28) and prediction.attention["AF1"].shape == (4, 20, 24, 28)
    assert report.resampled and report.network_spacing == (2.0, 2.0, 2.0)
    assert any("resampled to the model's grid" in w for w in report.warnings)
    # the same as running the network on the model's grid by hand and coming back
    from napari_autofocus.inference.predictor import run_network

    prepared = preprocess(raw, (1, 1, 1), card.normalization, (2, 2, 2))
    by_hand = to_source(run_network(model, prepared, {}, PredictOptions(device="cpu")), prepared)
    np.testing.assert_array_equal(prediction.labels, by_hand.labels)
    # computed box on the scan's grid covers the foreground
    (z0, z1), (y0, y1), (x0, x1) = prediction.crop_box
    assert z0 <= 3 and z1 >= 17 and y0 <= 4 and y1 >= 20 and x0 <= 5 and x1 >= 23


def test_an_older_card_keeps_its_target_spacing_from_the_provenance():
    old = _card().to_dict()
    del old["target_spacing"]
    old["provenance"] = {"resampled_to_spacing": [1.5, 1.5, 1.5]}
    assert ModelCard.from_dict(old).target_spacing == [1.5, 1.5, 1.5]
    assert Contract.from_card(ModelCard.from_dict(old)).target_spacing == (1.5, 1.5, 1.5)


def test_spacing_warnings():
    resampling = Contract.from_card(_card(target_spacing=[2, 2, 2]))
    assert "resampled" in check_spacing((1, 1, 1), resampling)[0]
    assert check_spacing((2, 2, 2), resampling) == []
    native = Contract.from_card(_card(spacing=[1, 1, 1]))
    assert "does not resample" in check_spacing((1, 1, 3), native)[0]
    assert check_spacing((1.05, 1, 1), native) == []


def test_channel_warnings():
    contract = Contract.from_card(_card(modalities=["T1-like", "T2-like"]))
    assert check_channels(["case [T1-like]", "case [T2-like]"], contract) == []
    swapped = check_channels(["scan_t2", "scan_t1"], contract)
    assert len(swapped) == 1 and "wrong order" in swapped[0] and "looks like T2-like" in swapped[0]
    assert check_channels(["a", "b"], contract) == []  # names that say nothing are not guessed at
    assert "called 'FLAIR'" in check_channels(["T1-like", "FLAIR"], contract, strict=True)[0]
    volume = np.ones((4, 4, 4), np.float32)
    assert "the same image is given as T1-like and T2-like" in check_channels(
        None, contract, [volume, volume]
    )


def test_intensity_and_phantom_warnings():
    raw = _scan()
    zscore = Contract.from_card(_card())
    assert check_intensities(raw, zscore) == []
    assert "no zero background" in check_intensities(raw + 5, zscore)[0]
    assert (
        "already normalised"
        in check_intensities(raw, Contract.from_card(_card(normalization={"scheme": "none"})))[0]
    )
    raw[1] = np.where(raw[0] != 0, 7.0, 0.0)
    assert "T2 is constant" in check_intensities(raw, zscore)[0]
    assert check_intensities(np.zeros_like(raw), zscore) == [
        "the scan is zero everywhere: there is nothing to segment"
    ]
    phantom = Contract.from_card(_card(provenance={"dataset": "AutofocusPhantom"}))
    assert "synthetic phantoms" in check_phantom(phantom, "")[0]
    assert check_phantom(phantom, PHANTOM_MARK) == [] and check_phantom(zscore, "") == []


@pytest.mark.parametrize("bad", ["T1 only"])
def test_predict_refuses_the_wrong_number_of_channels(bad):
    model = build_network("AFN1", 2, 3, channels=(4,) * 8)
    with pytest.raises(Exception, match=r"expects 2 input channel\(s\) \(T1, T2\) but got 1"):
        predict(model, _card(), Scan(_scan()[:1], (1, 1, 1)), PredictOptions(device="cpu"))


def test_predict_computes_the_foregrounds_box_in_each_plane():
    """A ball of tissue in air: what the CLI and the plugin compute is the ball's box plane by plane
    (the same as the whole box there), background elsewhere; the training cache keeps those boxes."""
    from napari_autofocus.inference.regions import PlaneBoxes

    shape = (24, 26, 28)
    radius = np.sqrt(sum((g - (n - 1) / 2) ** 2 for g, n in zip(np.indices(shape), shape, strict=True)))
    ball = radius <= 9
    raw = np.where(ball, np.random.default_rng(5).normal(100, 20, size=(2, *shape)), 0).astype(np.float32)
    model = build_network("BASIC", 2, 3, channels=(4,) * 8).eval()
    pred, _ = predict(model, _card(arch="BASIC"), Scan(raw.copy(), (1.0, 1.0, 1.0)))
    planes = PlaneBoxes.of_mask(ball)
    hull = planes.mask((0, 0, 0), shape)
    np.testing.assert_array_equal(pred.computed, hull)
    assert hull.sum() < ball.sum() * 1.6 and not hull[0].any()  # the ball's planes, not its 3D box
    box, _ = predict(
        model, _card(arch="BASIC"), Scan(raw.copy(), (1.0, 1.0, 1.0)), PredictOptions(regions=False)
    )
    np.testing.assert_array_equal(pred.labels[hull], box.labels[hull])
    assert (pred.labels[~hull] == 0).all()
    prepared = preprocess(raw.copy(), (1.0, 1.0, 1.0))
    again = PlaneBoxes.from_record(prepared.foreground_planes.record())
    np.testing.assert_array_equal(again.rows, planes.rows)
    np.testing.assert_array_equal(again.cols, planes.cols)


def test_predict_takes_every_choice_from_its_options():
    """The options reach the engine: whole mode is exact whatever the budget, tiled runs tiles, the
    outputs asked for are there and the others are not, and a bad policy is refused."""
    model = build_network("AFN1", 2, 3, channels=(4,) * 8).eval()
    raw = _scan()
    scan = Scan(raw, (1, 1, 1), channel_names=["T1", "T2"])
    options = PredictOptions(device="cpu", probabilities=True, attention=True, memory_budget_gib=0.5)
    pred, report = predict(model, _card(), scan, options)
    default, _ = predict(model, _card(), scan, PredictOptions(device="cpu", attention=True))
    np.testing.assert_array_equal(pred.labels, default.labels)
    np.testing.assert_array_equal(pred.attention["AF1"], default.attention["AF1"])
    assert pred.probabilities is not None and default.probabilities is None and pred.mode == "whole"
    assert report.channels == ["T1", "T2"] and np.array_equal(scan.image, raw)  # not owned: untouched
    tiled, _ = predict(model, _card(), scan, PredictOptions(device="cpu", mode="tiled"))
    assert tiled.mode == "tiled" and tiled.attention == {} and tiled.tiles_run >= 1
    with pytest.raises(Exception, match="non-finite policy"):
        predict(model, _card(), Scan(raw.copy(), (1, 1, 1)), PredictOptions(nonfinite="ignore"))


def test_the_cli_evaluate_and_the_plugin_all_predict_through_predict(tmp_path, monkeypatch):
    """One entry for every caller: checks, preprocessing and options are written once."""
    import napari_autofocus.inference.predictor as predictor
    from napari_autofocus.app.placement import Placement
    from napari_autofocus.app.session import RunRequest, run_model
    from napari_autofocus.nets import save_model

    calls, original = [], predictor.predict
    monkeypatch.setattr(predictor, "predict", lambda *a, **k: calls.append(1) or original(*a, **k))
    path = tmp_path / "m.safetensors"
    save_model(build_network("AFN1", 2, 3, channels=(4,) * 8), path, modalities=["T1", "T2"])
    raw = _scan()
    result = run_model(RunRequest(str(path), device="cpu"), list(raw), input_layers=["T1", "T2"],
                       placement=Placement(scale=(1, 1, 1), translate=(0, 0, 0)))  # fmt: skip
    assert calls == [1]
    shared = predictor.provenance(result.prediction, result.preprocessing, result.card)
    assert {k: result.provenance()[k] for k in shared} == shared  # the record is written once
    import nibabel as nib

    from src_training.cli import main

    case = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(raw, 0, -1), np.eye(4)), str(case))
    assert main(["predict", "--model", str(path), "--input", str(case), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert calls == [1, 1]
    import json

    record = json.loads(next((tmp_path / "o").glob("*_prediction.json")).read_text())
    assert set(shared) <= set(record) and record["mode"] == "whole" and record["device"] == "cpu"
    from phantom_configs import PHANTOM_40

    from src_training.phantom_cases import write_dataset

    data = write_dataset(tmp_path / "ds", 1, 0, PHANTOM_40)
    phantom = tmp_path / "phantom.safetensors"
    save_model(build_network("AFN1", 2, 3, channels=(4,) * 8), phantom, modalities=["T1-like", "T2-like"])
    assert main(["evaluate", "--model", str(phantom), "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert calls == [1, 1, 1]


def test_every_caller_refuses_a_wrong_channel_count_in_one_wording(tmp_path, capsys):
    from napari_autofocus.app.session import stack_inputs
    from napari_autofocus.errors import AutofocusError

    wording = r"the model expects 2 input channel\(s\) \(T1, T2\) but got 1"
    with pytest.raises(AutofocusError, match=wording):
        stack_inputs([_scan()[0]], _card())  # the plugin
    with pytest.raises(AutofocusError, match=wording):
        predict(build_network("AFN1", 2, 3, channels=(4,) * 8), _card(), Scan(_scan()[:1], (1, 1, 1)))
