"""Scoring label maps per case, per class and per region, and writing the report (JSON, CSV, table).

The metric definitions live in :mod:`napari_autofocus.analysis.metrics` (shared with the plugin); this module
decides *what* is scored (every foreground class, plus regions such as BraTS whole/core/enhancing)
and how results are summarised (mean and population std over cases, NaN = undefined is skipped and
counted separately through ``n``).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from napari_autofocus.analysis.metrics import CONVENTIONS, REGION_CONVENTIONS, score_labels, summarize
from napari_autofocus.errors import AutofocusError

METRICS = ("dice", "hd95", "sensitivity", "specificity")
GROUPS = ("classes", "regions")


def choose_regions(option: str | None, declared: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """Regions to score: a named convention, the dataset's/card's own (``auto``/``dataset``), or none."""
    option = (option or "auto").lower()
    if option in REGION_CONVENTIONS:
        return {k: list(v) for k, v in REGION_CONVENTIONS[option].items()}
    if option in ("auto", "dataset"):
        if option == "dataset" and not declared:
            raise AutofocusError(
                "--regions dataset: neither dataset.json nor the model card declares regions"
            )
        return {k: list(v) for k, v in (declared or {}).items()}
    if option == "none":
        return {}
    raise AutofocusError(
        f"--regions must be one of {', '.join([*REGION_CONVENTIONS, 'dataset', 'auto', 'none'])}, "
        f"got {option!r}"
    )


def class_structures(class_names: dict[int, str]) -> dict[str, list[int]]:
    """Every foreground class as a one-value structure, named by its class name."""
    return {name: [value] for value, name in sorted(class_names.items()) if value != 0}


def score_case(name: str, pred, truth, spacing, classes, regions, hd_empty: str = "nan") -> dict:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise AutofocusError(
            f"case {name}: prediction shape {pred.shape} differs from label shape {truth.shape}"
        )
    return {
        "case": name,
        "spacing": [float(s) for s in spacing],
        "classes": score_labels(pred, truth, classes, spacing, hd_empty),
        "regions": score_labels(pred, truth, regions, spacing, hd_empty),
    }


def summarise(cases: list[dict]) -> dict:
    """summary[group][structure][metric] = {mean, std, n} over cases."""
    out: dict = {}
    for group in GROUPS:
        names = list(cases[0][group]) if cases else []
        out[group] = {
            name: {m: summarize(c[group][name][m] for c in cases) for m in METRICS} for name in names
        }
    return out


def report(cases: list[dict], settings: dict) -> dict:
    return {"conventions": CONVENTIONS, "settings": settings, "summary": summarise(cases), "cases": cases}


def json_ready(value):
    """JSON has no NaN: write null for undefined numbers (metrics, an AUC with an empty side)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def write_report(result: dict, out: str | Path, name: str = "metrics") -> tuple[Path, Path]:
    """<name>.json (everything) and <name>.csv (one row per case and structure, plus mean/std rows)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / f"{name}.json", out / f"{name}.csv"
    json_path.write_text(json.dumps(json_ready(result), indent=1) + "\n")
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "group", "structure", *METRICS, "tp", "fp", "fn", "tn"])
        for case in result["cases"]:
            for group in GROUPS:
                for name, m in case[group].items():
                    writer.writerow(
                        [
                            case["case"],
                            group,
                            name,
                            *(m[k] for k in METRICS),
                            m["tp"],
                            m["fp"],
                            m["fn"],
                            m["tn"],
                        ]
                    )
        for stat in ("mean", "std"):
            for group in GROUPS:
                for name, m in result["summary"][group].items():
                    writer.writerow([stat, group, name, *(m[k][stat] for k in METRICS), "", "", "", ""])
    return json_path, csv_path


def format_table(result: dict) -> str:
    """A plain-text table of mean +- std per structure, headed by the metric conventions; columns
    are as wide as their widest cell, so large distances never run into the next column."""
    rows = []
    for group in GROUPS:
        for name, m in result["summary"][group].items():
            cells = [
                f"{m[k]['mean']:.4f} +- {m[k]['std']:.4f} ({m[k]['n']})" if m[k]["n"] else "n/a"
                for k in METRICS
            ]
            rows.append([f"{name} ({'region' if group == 'regions' else 'class'})", *cells])
    header = ["structure", *METRICS]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [f"metrics over {len(result['cases'])} case(s). {result['conventions']}", "", line(header)]
    lines.append("-" * len(lines[-1]))
    lines += [line(r) for r in rows]
    return "\n".join(lines)
