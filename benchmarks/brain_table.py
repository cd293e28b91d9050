"""Held-out brain-phantom table: Dice per BraTS region, and what the attention does per structure and size.

Every model is run on held-out brain-phantom cases (seeds no training run uses) the way
``evaluate`` runs it: the card's preprocessing, ``predict`` in its exact whole-volume mode,
scores on the source grid. Printed, as Markdown tables (mean ± std over cases):

1. Dice of the whole tumour (labels 1+2+3), the tumour core (1+3) and the enhancing tumour (3), and
   their mean;
2. for every autofocus model, per autofocus layer, the mean attention weight of each dilation rate
   and the mean expected rate inside the necrotic core, the oedema, the enhancing rim and the
   tumour-free brain;
3. the same expected rate inside each tumour by its size class (core radius < 8 mm, 8-18 mm,
   > 18 mm), from the tumour list that ``dataset.json`` records.

    python benchmarks/brain_table.py --models runs/*/model.safetensors --cases 10
    python benchmarks/brain_table.py --data data/brain_heldout --json results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.phantom_table import record_in_card  # noqa: E402
from napari_autofocus.errors import AutofocusError  # noqa: E402

HELD_OUT_SEED = 5000  # training uses seeds 0.., the bundled sample 9000
REGIONS = {"whole tumour": (1, 2, 3), "tumour core": (1, 3), "enhancing tumour": (3,)}
STRUCTURES = {"necrotic core": 1, "oedema": 2, "enhancing rim": 3}
SIZE_CLASSES = (("small (< 8 mm)", 0.0, 8.0), ("medium (8-18 mm)", 8.0, 18.0), ("large (> 18 mm)", 18.0, 1e9))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="model files (.safetensors)")
    p.add_argument("--data", help="a brain-phantom dataset folder (default: generate held-out cases)")
    p.add_argument("--cases", type=int, default=10, help="held-out cases to generate (default 10)")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help=f"first seed (default {HELD_OUT_SEED})")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=1, help="processes for generating cases")
    p.add_argument("--json", help="also write every number to this JSON file")
    p.add_argument("--record", action="store_true", help="write each model's held-out summary into its card")
    return p.parse_args(argv)


def tumour_masks(truth: np.ndarray, tumours: list[dict], geometry) -> dict[str, np.ndarray]:
    """Labelled voxels per size class: each labelled voxel belongs to the nearest tumour centre
    (centres are in mm from the file's first voxel, in the file's own voxel order)."""
    from napari_autofocus.io.nifti import source_view, to_display_orientation

    masks = {name: np.zeros(truth.shape, bool) for name, _, _ in SIZE_CLASSES}
    stored = source_view(truth, geometry)  # the file's voxel order, where the centres were drawn
    labelled = np.argwhere(stored > 0)
    if not tumours or not len(labelled):
        return masks
    centres = np.array([t["centre_mm"] for t in tumours])
    spacing = np.asarray(geometry.spacing[::-1])  # (S, P, L) -> per source axis for an axis-aligned file
    nearest = np.linalg.norm(labelled[:, None, :] * spacing - centres[None], axis=2).argmin(axis=1)
    for index, tumour in enumerate(tumours):
        name = next(n for n, low, high in SIZE_CLASSES if low <= tumour["core_radius_mm"] < high)
        mask = np.zeros(stored.shape, bool)
        mask[tuple(labelled[nearest == index].T)] = True
        masks[name] |= to_display_orientation(mask, geometry)
    return masks


def evaluate_model(path: Path, cases: list, dataset_meta: dict, n_channels: int, device: str) -> dict:
    from napari_autofocus.analysis.attention_maths import expected_rate
    from napari_autofocus.analysis.metrics import dice
    from napari_autofocus.inference.predictor import PredictOptions, Scan, predict
    from napari_autofocus.nets import load_model
    from src_training.data import read_case

    model, card = load_model(path)
    if card.in_channels != n_channels:
        raise AutofocusError(f"{path} expects {card.in_channels} channel(s); the dataset has {n_channels}")
    tumours = dataset_meta.get("brain_phantom", {}).get("tumours", {})
    result = {
        "model": path.name,
        "arch": card.arch,
        "iterations": card.provenance.get("iterations"),
        "cases": [],
    }
    weights: dict[str, dict[str, list]] = {}
    rates_by: dict[str, dict[str, list]] = {}
    for case in cases:
        raw = read_case(case, n_channels)
        scan = Scan(raw.image, raw.spacing, description=raw.geometry.description)
        pred, _ = predict(model, card, scan, PredictOptions(device=device, attention=True))
        truth, labels = np.asarray(raw.label), np.asarray(pred.labels)
        scores = {name: dice(np.isin(labels, v), np.isin(truth, v)) for name, v in REGIONS.items()}
        result["cases"].append({"case": case.name, "dice": scores})
        brain = raw.image.max(axis=0) > 0
        regions = {name: truth == value for name, value in STRUCTURES.items()}
        regions["tumour-free brain"] = (truth == 0) & brain
        regions.update(tumour_masks(truth, tumours.get(case.name, []), raw.geometry))
        for layer, maps in pred.attention.items():
            result.setdefault("rates", {})[layer] = list(pred.rates[layer])
            rate = expected_rate(maps, pred.rates[layer])
            for name, mask in regions.items():
                inside = mask & np.isfinite(rate)
                if inside.any():
                    rates_by.setdefault(layer, {}).setdefault(name, []).append(float(rate[inside].mean()))
                    mix = [float(np.asarray(m)[inside].mean()) for m in maps]
                    weights.setdefault(layer, {}).setdefault(name, []).append(mix)
        print(
            f"  {card.arch:7s} {case.name}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()),
            flush=True,
        )
    columns = {name: [c["dice"][name] for c in result["cases"]] for name in REGIONS}
    columns["mean"] = [float(np.mean(list(c["dice"].values()))) for c in result["cases"]]
    result["summary"] = {
        n: {"mean": float(np.nanmean(v)), "std": float(np.nanstd(v))} for n, v in columns.items()
    }
    result["expected_rate"] = {
        layer: {name: float(np.mean(v)) for name, v in by.items()} for layer, by in rates_by.items()
    }
    result["weights"] = {
        layer: {name: np.mean(v, axis=0).round(3).tolist() for name, v in by.items()}
        for layer, by in weights.items()
    }
    return result


def dice_table(results: list[dict]) -> str:
    names = [*REGIONS, "mean"]
    lines = ["| model | iterations | " + " | ".join(f"Dice {n}" for n in names) + " |",
             "|" + " --- |" * (2 + len(names))]  # fmt: skip
    for r in sorted(results, key=lambda r: -r["summary"]["mean"]["mean"]):
        cells = [f"{r['summary'][n]['mean']:.3f} ± {r['summary'][n]['std']:.3f}" for n in names]
        lines.append(f"| {r['arch']} | {r['iterations']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attention_tables(results: list[dict]) -> str:
    structures = [*STRUCTURES, "tumour-free brain"]
    sizes = [name for name, _, _ in SIZE_CLASSES]
    out = ["| model | layer | rates | " + " | ".join(f"weights in {n}" for n in structures) + " |",
           "| --- | --- | --- |" + " --- |" * len(structures)]  # fmt: skip
    for r in results:
        for layer, by in r.get("weights", {}).items():
            cells = [" / ".join(f"{w:.2f}" for w in by[n]) if n in by else "-" for n in structures]
            out.append(f"| {r['arch']} | {layer} | {r['rates'][layer]} | " + " | ".join(cells) + " |")
    out += ["", "| model | layer | " + " | ".join(f"rate in {n}" for n in [*structures, *sizes]) + " |",
            "| --- | --- |" + " --- |" * (len(structures) + len(sizes))]  # fmt: skip
    for r in results:
        for layer, by in r.get("expected_rate", {}).items():
            cells = [f"{by[n]:.2f}" if n in by else "-" for n in [*structures, *sizes]]
            out.append(f"| {r['arch']} | {layer} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def run(args) -> int:
    from src_training.brain_phantom_cases import write_brain_dataset
    from src_training.data import open_dataset

    for path in map(Path, args.models):
        if not path.is_file():
            raise AutofocusError(f"{path}: no such model file")
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            root = Path(args.data)
        else:
            last = args.seed + args.cases - 1
            print(f"generating {args.cases} held-out brain cases (seeds {args.seed}..{last})")
            root = write_brain_dataset(Path(tmp) / "heldout", args.cases, args.seed, jobs=args.jobs)
        dataset = open_dataset(root)
        meta = json.loads((root / "dataset.json").read_text())
        cases = [c for c in dataset.cases if c.label is not None]
        results = []
        for path in map(Path, args.models):
            print(f"{path.name}:", flush=True)
            results.append(evaluate_model(path, cases, meta, len(dataset.modalities), args.device))
    print(f"\nDice on {len(cases)} held-out brain-phantom cases; mean ± std over cases\n")
    print(dice_table(results))
    if any(r.get("weights") for r in results):
        print("\nAttention per autofocus layer: mean weight of each rate, and the mean expected rate\n")
        print(attention_tables(results))
    if args.record:
        last = args.seed + len(cases) - 1
        source = args.data or f"{len(cases)} generated brain cases, seeds {args.seed}..{last}"
        for path, result in zip(map(Path, args.models), results, strict=True):
            record_in_card(path, result, source)
        print(f"\nrecorded the held-out results in the cards of {len(results)} model file(s)")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"cases": [c.name for c in cases], "results": results}, indent=2)
        )
        print(f"\nwrote {args.json}")
    return 0


def main(argv=None) -> int:
    try:
        return run(parse_args(argv))
    except AutofocusError as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    raise SystemExit(main())
