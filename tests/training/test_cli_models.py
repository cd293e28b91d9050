"""``python -m src_training summary`` and ``import-reference``."""

from __future__ import annotations

import json

import pytest
from repo_paths import GOLDEN

from napari_autofocus.nets.card import read_card
from src_training.cli import main

needs_golden = pytest.mark.usefixtures("golden")  # skipped without shared/, failed in CI


def test_summary_table_has_table3_numbers(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    for arch, params, rf in [("BASIC", "315,725", 29), ("AFN6", "450,209", 173), ("DM", "662,555", 51)]:
        line = next(line for line in out.splitlines() if line.startswith(arch + " "))
        assert params in line and f" {rf} " in line
    dm = next(line for line in out.splitlines() if line.startswith("DM "))
    assert dm.split()[-3:] == ["24", "27", "0"]  # margin, output for 75^3, autofocus layers


def test_summary_json(capsys):
    assert main(["summary", "--arch", "AFN1", "--arch", "DM", "--patch", "76", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["arch"], r["parameters"], r["rf_min"], r["rf_max"], r["output"]) for r in rows] == [
        ("AFN1", 349_904, 29, 53, 48),
        ("DM", 662_555, 51, 51, None),  # 76 is not divisible by 3
    ]


def test_summary_unknown_arch_is_a_clean_error(capsys):
    assert main(["summary", "--arch", "AFN9"]) == 2
    assert "unknown architecture" in capsys.readouterr().err


@needs_golden
def test_import_reference_writes_a_loadable_file(tmp_path, capsys):
    from napari_autofocus.nets import load_model

    out = tmp_path / "afn1.safetensors"
    src = GOLDEN / "AFN1_390_checkpoint.pth.tar"
    argv = ["import-reference", str(src), "--out", str(out), "--arch", "AFN1", "--classes-names"]
    argv += ["bg", "nec", "ed", "ne", "enh"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    card = read_card(out)
    assert card.arch == "AFN1" and card.class_names["1"] == "nec" and card.modalities[0] == "Flair"
    model, loaded = load_model(out)
    assert model.arch == "AFN1" and loaded.provenance["epoch"] == 390

    assert main(argv) == 2  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert (
        main(["import-reference", str(src), "--out", str(tmp_path / "x.safetensors"), "--arch", "Basic"]) == 2
    )
    assert "AFN1" in capsys.readouterr().err
