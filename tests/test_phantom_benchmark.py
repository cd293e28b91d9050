"""benchmarks/phantom_table.py: Dice per class per case, summaries, and attention statistics."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from napari_autofocus.card import read_card, read_metadata
from src_training.phantom import PhantomConfig, write_dataset

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("phantom_table", REPO / "benchmarks" / "phantom_table.py")
phantom_table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(phantom_table)

TINY = PhantomConfig(shape=(44, 44, 44), large_lobes=(4, 5), n_large=(1, 1), n_small=(1, 2))


def _tiny_model(path: Path, arch: str, seed: int) -> str:
    import torch

    from napari_autofocus.nets import build_network, save_model

    torch.manual_seed(seed)
    model = build_network(arch, 2, 3, channels=(4, 4, 4, 4, 4, 4, 4, 4))
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
    for regions in rates.values():
        assert set(regions) == {"small lesion", "large lesion", "tissue"}
        assert all(2.0 <= value <= 14.0 for value in regions.values())
    # --record: the card now carries the held-out numbers; the weights are the same
    card = read_card(afn)
    assert card.metrics["held_out"]["dice"] == results["AFN2"]["summary"]
    assert card.metrics["held_out"]["data"] == str(data)
    assert content_hash(afn) == before
