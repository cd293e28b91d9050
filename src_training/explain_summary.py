"""The cohort summary of ``explain``'s per-case records: means over cases, pooled size bins, CSV rows, a plot.

Structures are summarised as the mean and standard deviation over cases of each case's mean (a
large case does not outweigh a small one, as in ``evaluate``); size bins pool the voxels of every
lesion of that size in the cohort, since most cases hold only a few lesions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from napari_autofocus.analysis.attention_statistics import mean_and_std, pooled_size_means


def summarise(records: Mapping[str, dict]) -> dict:
    """{"rates", "structures": {structure: {layer: stats}}, "size_bins": {bin: {layer: pooled}}}."""
    rates: dict[str, list[int]] = {}
    per_structure: dict[str, dict[str, list[dict]]] = {}
    per_bin: dict[str, dict[str, list[dict]]] = {}
    for record in records.values():
        rates.update(record.get("rates", {}))
        for layer, structures in record.get("layers", {}).items():
            for name, entry in structures.items():
                per_structure.setdefault(name, {}).setdefault(layer, []).append(entry)
        for layer, bins in record.get("size_bins", {}).items():
            for name, entry in bins.items():
                per_bin.setdefault(name, {}).setdefault(layer, []).append(entry)
    structures = {
        name: {layer: _case_means(entries) for layer, entries in layers.items()}
        for name, layers in per_structure.items()
    }
    bins = {
        name: {layer: pooled_size_means(entries, rates[layer]) for layer, entries in layers.items()}
        for name, layers in sorted(per_bin.items(), key=lambda item: _bin_order(item[0]))
    }
    return {"rates": rates, "structures": structures, "size_bins": bins}


def _bin_order(name: str) -> float:
    """'< 10 mm' before '10-20 mm' before '>= 40 mm'."""
    if name.startswith("<"):
        return -1.0
    if name.startswith(">="):
        return float("inf")
    head = name.split("-")[0].split()[0]
    try:
        return float(head)
    except ValueError:
        return 0.0


def _case_means(entries: list[dict]) -> dict:
    k = len(entries[0]["mean_weight"])
    return {
        "cases": len(entries),
        "mean_weight": [mean_and_std([e["mean_weight"][i] for e in entries]) for i in range(k)],
        "expected_rate": mean_and_std([e["expected_rate"] for e in entries]),
        "entropy": mean_and_std([e["entropy"] for e in entries]),
        "auc": [mean_and_std([e["auc"][i] for e in entries]) for i in range(k)],
    }


def _layers_in_order(names) -> list[str]:
    """AF1, AF2, ..., AF10 (numeric order, not AF1, AF10, AF2)."""
    return sorted(names, key=lambda n: (len(n), n))


def structure_rows(records: Mapping[str, dict], summary: dict) -> tuple[list[str], list[list]]:
    """explain.csv: one row per case, structure and layer, then mean and std rows over cases."""
    k = max((len(r) for r in summary["rates"].values()), default=0)
    header = ["case", "structure", "layer", "rates", "voxels"]
    header += [f"weight_{i + 1}" for i in range(k)] + ["expected_rate", "entropy", "dominant_rate"]
    header += [f"auc_{i + 1}" for i in range(k)]
    rows = []
    for case in sorted(records):
        layers = records[case].get("layers", {})
        for layer in _layers_in_order(layers):
            rates = " ".join(str(r) for r in records[case]["rates"][layer])
            for name, e in layers[layer].items():
                rows.append([case, name, layer, rates, e["voxels"], *e["mean_weight"], e["expected_rate"],
                             e["entropy"], e["dominant_rate"], *e["auc"]])  # fmt: skip
    for stat in ("mean", "std"):
        for name, layers in summary["structures"].items():
            for layer in _layers_in_order(layers):
                s = layers[layer]
                rates = " ".join(str(r) for r in summary["rates"][layer])
                weights, aucs = (w[stat] for w in s["mean_weight"]), (a[stat] for a in s["auc"])
                rows.append([stat, name, layer, rates, s["cases"], *weights, s["expected_rate"][stat],
                             s["entropy"][stat], "", *aucs])  # fmt: skip
    return header, rows


def size_rows(summary: dict) -> tuple[list[str], list[list]]:
    """explain_sizes.csv: one row per size bin and layer, pooled over the cohort."""
    k = max((len(r) for r in summary["rates"].values()), default=0)
    header = ["size_bin", "layer", "rates", "lesions", "voxels"]
    header += [f"weight_{i + 1}" for i in range(k)] + ["expected_rate", "entropy"]
    rows = []
    for name, layers in summary["size_bins"].items():
        for layer in _layers_in_order(layers):
            p = layers[layer]
            if p is None:
                continue
            rates = " ".join(str(r) for r in summary["rates"][layer])
            rows.append([name, layer, rates, p["components"], p["voxels"], *p["mean_weight"],
                         p["expected_rate"], p["entropy"]])  # fmt: skip
    return header, rows


def plot_summary(summary: dict, path: Path) -> None:
    """One row per autofocus layer: stacked mean weights per rate for each structure and size bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_autofocus.analysis.explorer_maps import rate_hue
    from napari_autofocus.io.atomic import atomic_path

    layers = _layers_in_order(summary["rates"])
    rows = max(1, len(layers))
    fig, axes = plt.subplots(rows, 2, figsize=(11, 1.5 + 1.6 * rows), squeeze=False)
    for row, layer in enumerate(layers):
        rates = summary["rates"][layer]
        structures = {n: s[layer]["mean_weight"] for n, s in summary["structures"].items() if layer in s}
        sizes = {n: b[layer]["mean_weight"] for n, b in summary["size_bins"].items() if b.get(layer)}
        groups = [(axes[row][0], structures, "mean"), (axes[row][1], sizes, None)]
        for ax, bars, key in groups:
            names = list(bars)
            left = [0.0] * len(names)
            for k, rate in enumerate(rates):
                widths = [(bars[n][k][key] if key else bars[n][k]) for n in names]
                widths = [w if w == w else 0.0 for w in widths]  # NaN -> empty
                ax.barh(names, widths, left=left, color=rate_hue(k), label=f"r={rate}")
                left = [a + b for a, b in zip(left, widths, strict=True)]
            ax.set_xlim(0, 1)
            ax.tick_params(labelsize=7)
            if not names:
                ax.text(0.5, 0.5, "no lesions", ha="center", va="center", transform=ax.transAxes)
        axes[row][0].set_ylabel(layer)
        if row == 0:
            axes[0][0].set_title("mean weight per rate, per structure (mean over cases)", fontsize=9)
            axes[0][1].set_title("per lesion diameter (pooled voxels)", fontsize=9)
            axes[0][0].legend(fontsize=7, loc="lower left", bbox_to_anchor=(0, 1.12), ncol=len(rates))
    for ax in axes[-1]:
        ax.set_xlabel("attention weight (stacked over the rates)", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
