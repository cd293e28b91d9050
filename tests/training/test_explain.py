"""``explain``: cohort attention statistics equal a direct computation; shards give one run's summary."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from launcher import torchrun

from napari_autofocus.io.nifti import load_nifti
from napari_autofocus.io.prediction_files import OutputFile, write_outputs
from src_training.cli import main

REPO = Path(__file__).resolve().parents[2]
RATES = [2, 6, 10, 14]
SPACING = (1.5, 1.0, 2.0)


def synthetic_case(folder: Path, labels_dir: Path, case: str, seed: int):
    """A prediction folder entry written by this tool's writer: random attention (float16 values, NaN
    outside a computed box) over a label map with a small and a large lesion of different classes."""
    rng = np.random.default_rng(seed)
    shape = (20, 18, 16)
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 2:5, 2:4] = 1  # 18 voxels of 3 mm^3: about 4.8 mm across
    labels[8:18, 6:16, 4:14] = 2  # 1000 voxels: about 17.9 mm across
    labels[9:12, 7:10, 5:8] = 1  # a class-1 core inside the large lesion (same component)
    labels_dir.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(labels, np.diag([*SPACING, 1.0])), str(labels_dir / f"{case}.nii.gz"))
    loaded = load_nifti(labels_dir / f"{case}.nii.gz")  # napari order, as the writer expects
    geometry, labels = loaded.geometry, loaded.data
    shape = labels.shape
    attention = {}
    for layer in ("AF1", "AF2"):
        logits = rng.normal(size=(4, *shape)) + 1.5 * (labels > 0) * np.arange(4)[:, None, None, None] / 3
        weights = np.exp(logits) / np.exp(logits).sum(0)
        weights = weights.astype(np.float16).astype(np.float32)
        weights[:, :, :, 15:] = np.nan  # the last plane was not computed
        attention[layer] = weights
    files = [OutputFile(f"{case}.nii.gz", lambda: labels, is_label=True)]
    files += [OutputFile(f"{case}_{k}_attention.nii.gz", lambda w=w: w) for k, w in attention.items()]
    card = {
        "dilations": RATES,
        "class_names": {"0": "bg", "1": "core", "2": "mass"},
        "regions": {"whole": [1, 2]},
    }
    write_outputs(folder, case, files, geometry, {"case": case, "model_card": card})
    # as written and read back (float16-exact values survive the float32 NIfTI)
    back = {k: load_nifti(folder / f"{case}_{k}_attention.nii.gz").data for k in attention}
    return load_nifti(labels_dir / f"{case}.nii.gz").data, back


def pairwise_auc(inside: np.ndarray, outside: np.ndarray) -> float:
    greater = (inside[:, None] > outside[None, :]).mean()
    ties = (inside[:, None] == outside[None, :]).mean()
    return float(greater + 0.5 * ties)


def test_explain_numbers_equal_a_direct_computation(tmp_path):
    from scipy import ndimage

    pred, labels_dir, out = tmp_path / "pred", tmp_path / "labels", tmp_path / "explain"
    labels, attention = synthetic_case(pred, labels_dir, "c1", seed=1)
    assert main(["explain", "--pred", str(pred), "--labels", str(labels_dir), "--out", str(out)]) == 0
    record = json.loads((out / "cases" / "c1_explain.json").read_text())
    for layer, a in attention.items():
        computed = ~np.isnan(a[0])
        for name, values in {"core": [1], "mass": [2], "bg": [0], "whole (region)": [1, 2]}.items():
            inside = np.isin(labels, values) & computed
            outside = ~np.isin(labels, values) & computed
            got = record["layers"][layer][name]
            assert got["voxels"] == inside.sum()
            np.testing.assert_allclose(got["mean_weight"], a[:, inside].astype(np.float64).mean(1), rtol=1e-6)
            expected = (a[:, inside] * np.array(RATES)[:, None]).sum(0).mean()
            assert got["expected_rate"] == pytest.approx(expected, rel=1e-5)
            p = np.clip(a[:, inside], 1e-12, 1)
            assert got["entropy"] == pytest.approx((-(p * np.log(p)).sum(0) / np.log(4)).mean(), rel=1e-5)
            for k in range(4):
                assert got["auc"][k] == pytest.approx(pairwise_auc(a[k][inside], a[k][outside]), abs=1e-12)
            assert got["dominant_rate"] == RATES[int(np.argmax(got["mean_weight"]))]
        # the higher rates were made likelier inside lesions: the AUC of r=14 is well above 0.5 for the mass
        assert (
            record["layers"][layer]["mass"]["auc"][3] > 0.7 > 0.3 > record["layers"][layer]["mass"]["auc"][0]
        )
        # sizes: two lesions, one per bin (< 10 mm and 10-20 mm), voxel sums over computed voxels
        components, _ = ndimage.label(labels > 0, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(components.reshape(-1))[1:]
        small = (components == 1 + int(np.argmin(sizes))) & computed
        bins = record["size_bins"][layer]
        assert set(bins) == {"< 10 mm", "10-20 mm"}
        assert bins["< 10 mm"]["components"] == 1 and bins["< 10 mm"]["voxels"] == small.sum()
        np.testing.assert_allclose(
            bins["< 10 mm"]["weight_sum"], a[:, small].astype(np.float64).sum(1), rtol=1e-6
        )
    summary = json.loads((out / "explain.json").read_text())
    assert summary["cases"] == ["c1"] and summary["missing"] == []
    mass = summary["structures"]["mass"]["AF1"]
    assert mass["mean_weight"][0]["mean"] == pytest.approx(record["layers"]["AF1"]["mass"]["mean_weight"][0])
    rows = (out / "explain.csv").read_text().splitlines()
    assert rows[0].startswith("case,structure,layer,rates,voxels,weight_1")
    voxels = record["layers"]["AF1"]["mass"]["voxels"]
    assert any(r.startswith(f"c1,mass,AF1,2 6 10 14,{voxels},") for r in rows)
    assert (out / "explain.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_pools_size_bins_over_cases_and_parts_equal_one_run(tmp_path):
    pred, labels_dir = tmp_path / "pred", tmp_path / "labels"
    for i in range(3):
        synthetic_case(pred, labels_dir, f"c{i}", seed=i)
    base = ["explain", "--pred", str(pred), "--labels", str(labels_dir)]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    parts = tmp_path / "parts"
    for part in (0, 1):
        assert main([*base, "--out", str(parts), "--num-parts", "2", "--part-id", str(part)]) == 0
    assert not (parts / "explain.json").exists()  # parts write their cases; the summary comes after
    assert main([*base, "--out", str(parts), "--continue"]) == 0
    one, merged = (json.loads((p / "explain.json").read_text()) for p in (tmp_path / "one", parts))
    assert merged == one
    records = [json.loads((tmp_path / "one" / "cases" / f"c{i}_explain.json").read_text()) for i in range(3)]
    pooled = one["size_bins"]["10-20 mm"]["AF2"]
    entries = [r["size_bins"]["AF2"]["10-20 mm"] for r in records]
    assert pooled["components"] == 3 and pooled["voxels"] == sum(e["voxels"] for e in entries)
    expected = np.sum([e["weight_sum"] for e in entries], 0) / pooled["voxels"]
    np.testing.assert_allclose(pooled["mean_weight"], expected)
    case_means = [r["layers"]["AF2"]["core"]["entropy"] for r in records]
    assert one["structures"]["core"]["AF2"]["entropy"]["mean"] == pytest.approx(np.mean(case_means))
    assert one["structures"]["core"]["AF2"]["entropy"]["std"] == pytest.approx(np.std(case_means))


def test_explain_under_torchrun_writes_one_runs_summary(tmp_path):
    pred, labels_dir = tmp_path / "pred", tmp_path / "labels"
    for i in range(3):
        synthetic_case(pred, labels_dir, f"c{i}", seed=i)
    base = ["explain", "--pred", str(pred), "--labels", str(labels_dir)]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    torchrun([*base, "--out", str(tmp_path / "ddp")])
    one, ddp = (json.loads((tmp_path / p / "explain.json").read_text()) for p in ("one", "ddp"))
    assert ddp == one


def test_explain_keeps_files_it_did_not_write_and_says_what_is_missing(tmp_path, capsys):
    pred, labels_dir, out = tmp_path / "pred", tmp_path / "labels", tmp_path / "explain"
    synthetic_case(pred, labels_dir, "c1", seed=1)
    out.mkdir()
    (out / "explain.csv").write_text("my own table\n")
    args = ["explain", "--pred", str(pred), "--labels", str(labels_dir), "--out", str(out)]
    assert main(args) == 2
    assert "explain.csv was not written by napari-autofocus" in capsys.readouterr().err
    assert (out / "explain.csv").read_text() == "my own table\n"
    (out / "explain.csv").unlink()
    (labels_dir / "c1.nii.gz").unlink()
    assert main([*args, "--keep-going"]) == 3
    assert "failed: c1: c1: no label map" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["explain", "--pred", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no predictions of napari-autofocus with attention maps" in capsys.readouterr().err
