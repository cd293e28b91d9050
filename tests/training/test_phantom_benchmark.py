"""benchmarks/phantom_table.py: Dice per class per case, summaries, and attention statistics."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from repo_paths import REPO

from napari_autofocus.nets.card import read_card, read_metadata
from src_training.phantom_cases import PhantomConfig, write_dataset

SPEC = importlib.util.spec_from_file_location("phantom_table", REPO / "benchmarks" / "phantom_table.py")
phantom_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(phantom_table)

TINY = PhantomConfig(shape=(44, 44, 44), large_lobes=(4, 5), n_large=(1, 1), n_small=(1, 2))


def _tiny_model(path: Path, arch: str, seed: int) -> str:
    import torch

    from napari_autofocus.nets import build_network, save_model

    torch.manual_seed(seed)
    model = build_network(arch, 2, 3, channels=(4, 4, 4, 4, 4, 4, 4, 4))
    with torch.no_grad():  # large random weights: attention that varies in space, unlike a fresh model's
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    save_model(
        model.eval(),
        path,
        modalities=["T1-like", "T2-like"],
        class_names={"0": "background", "1": "small lesion", "2": "large lesion"},
        normalization={"scheme": "zscore", "roi": "nonzero", "outside_value": 0.0},
    )
    return str(path)


def content_hash(path: str) -> str:
    return read_metadata(path)["content_sha256"]


def expected_rates_by_hand(model_path: str, data: Path, lookalikes: dict | None = None) -> dict:
    """Mean over cases of the per-case mean of sum_k a_k r_k inside each ground-truth region."""
    from napari_autofocus.inference import predict_volume
    from napari_autofocus.inference.normalization import normalize
    from napari_autofocus.nets import load_model
    from src_training.data import open_dataset, read_case

    model, card = load_model(model_path)
    per_layer: dict = {}
    for case in open_dataset(data).cases:
        raw = read_case(case, 2)
        image = normalize(raw.image, card.normalization)
        foreground = (raw.image != 0).any(axis=0)  # the scan's non-zero voxels: what is computed
        pred = predict_volume(model, image, roi=foreground, device="cpu", attention=True)
        truth = raw.label
        regions = {
            "small lesion": truth == 1,
            "large lesion": truth == 2,
            "tissue": (truth == 0) & (raw.image.max(0) > 0),
        }
        if lookalikes:
            regions["look-alike"] = lookalikes[case.name]
            regions["tissue"] = regions["tissue"] & ~lookalikes[case.name]
        for layer, maps in pred.attention.items():
            rate = np.tensordot(np.array(pred.rates[layer], np.float32), maps.astype(np.float32), axes=1)
            for name, mask in regions.items():
                per_layer.setdefault(layer, {}).setdefault(name, []).append(float(rate[mask].mean()))
    return {layer: {name: np.mean(v) for name, v in regions.items()} for layer, regions in per_layer.items()}


def test_summary_is_mean_and_spread_over_cases():
    cases = [
        {"dice": {"small lesion": 0.5, "large lesion": 1.0}},
        {"dice": {"small lesion": 0.7, "large lesion": 0.8}},
    ]
    summary = phantom_table.summarise(cases)
    assert summary["small lesion"] == pytest.approx({"mean": 0.6, "std": 0.1})
    assert summary["large lesion"] == pytest.approx({"mean": 0.9, "std": 0.1})
    assert summary["mean"] == pytest.approx({"mean": 0.75, "std": 0.0})
    table = phantom_table.dice_table([{"arch": "AFN6", "training": {"iterations": 600}, "summary": summary}])
    assert "| AFN6 | 600 | 0.600 ± 0.100 | 0.900 ± 0.100 | 0.750 ± 0.000 |" in table


def test_benchmark_scores_every_model_and_measures_attention(tmp_path, capsys):
    data = write_dataset(tmp_path / "heldout", cases=2, seed=7000, config=TINY)
    afn = _tiny_model(tmp_path / "afn.safetensors", "AFN2", 0)
    basic = _tiny_model(tmp_path / "basic.safetensors", "BASIC", 1)
    out = tmp_path / "results.json"
    before = content_hash(afn)
    args = ["--models", afn, basic, "--data", str(data), "--device", "cpu", "--json", str(out), "--record"]
    assert phantom_table.main(args) == 0
    printed = capsys.readouterr().out
    assert "| AFN2 |" in printed and "| BASIC |" in printed and "| AFN2 | AF2 | [2, 6, 10, 14] |" in printed
    results = {r["arch"]: r for r in json.loads(out.read_text())["results"]}
    for result in results.values():
        assert [c["case"] for c in result["cases"]] == ["phantom_07000", "phantom_07001"]
        means = [np.mean(list(c["dice"].values())) for c in result["cases"]]
        assert result["summary"]["mean"]["mean"] == pytest.approx(np.mean(means))
        assert all(0.0 <= d <= 1.0 for c in result["cases"] for d in c["dice"].values())
    assert results["BASIC"]["expected_rate"] == {}
    rates = results["AFN2"]["expected_rate"]
    assert sorted(rates) == ["AF1", "AF2"]
    by_hand = expected_rates_by_hand(afn, data)
    assert {(layer, name): value for layer, regions in rates.items() for name, value in regions.items()} == (
        pytest.approx({(layer, name): v for layer, regions in by_hand.items() for name, v in regions.items()})
    )
    assert len({round(v, 3) for regions in rates.values() for v in regions.values()}) > 2  # not a constant
    # --record: the card now carries the held-out numbers; the weights are the same
    card = read_card(afn)
    assert card.metrics["held_out"]["dice"] == results["AFN2"]["summary"]
    assert card.metrics["held_out"]["data"] == str(data)
    assert content_hash(afn) == before


def test_nodules_cases_get_a_lookalike_region_taken_out_of_tissue(tmp_path):
    import argparse

    from src_training.data import open_dataset
    from src_training.phantom_cases import make_case_with_parts

    config = PhantomConfig(shape=(112, 112, 112), style="nodules")
    data = write_dataset(tmp_path / "heldout", cases=1, seed=7000, config=config)
    cases = open_dataset(data).cases
    args = argparse.Namespace(data=None, style="nodules", seed=7000)
    parts = phantom_table.hidden_parts(args, cases)
    expected = make_case_with_parts(7000, config)[2]["look-alike"]
    assert expected.sum() > 10_000 and (parts["phantom_07000"]["look-alike"] == expected).all()
    assert phantom_table.hidden_parts(argparse.Namespace(data=None, style="clusters", seed=7000), cases) == {}

    afn = _tiny_model(tmp_path / "afn.safetensors", "AFN1", 0)
    result = phantom_table.evaluate_model(Path(afn), cases, 2, "cpu", parts)
    by_hand = expected_rates_by_hand(afn, data, {"phantom_07000": expected})
    assert set(result["expected_rate"]["AF1"]) == {"small lesion", "large lesion", "look-alike", "tissue"}
    assert result["expected_rate"]["AF1"] == pytest.approx(by_hand["AF1"])
    table = phantom_table.attention_table([result])
    assert "| small lesion | large lesion | look-alike | tissue |" in table


def test_bad_input_is_a_clear_error_before_any_work(tmp_path):
    model = _tiny_model(tmp_path / "basic.safetensors", "BASIC", 0)
    with pytest.raises(SystemExit, match=r"error: .*nope.safetensors: no such model file"):
        phantom_table.main(["--models", model, str(tmp_path / "nope.safetensors"), "--cases", "1"])
    with pytest.raises(SystemExit, match="error: --cases must be at least 1, got 0"):
        phantom_table.main(["--models", model, "--cases", "0"])
    reference = tmp_path / "weights.pth.tar"
    reference.write_bytes(b"not used")
    with pytest.raises(SystemExit, match="--record rewrites model files and takes .safetensors files only"):
        phantom_table.main(["--models", str(reference), "--record"])
    unlabelled = write_dataset(tmp_path / "unlabelled", cases=1, seed=1, config=TINY)
    (unlabelled / "labelsTr" / "phantom_00001.nii.gz").unlink()
    meta = json.loads((unlabelled / "dataset.json").read_text())
    meta["training"], meta["test"] = [], ["./imagesTr/phantom_00001.nii.gz"]
    (unlabelled / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SystemExit, match="error: .*(no training cases|no labelled cases)"):
        phantom_table.main(["--models", model, "--data", str(unlabelled)])
