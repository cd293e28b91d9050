"""The phantom benchmark: a Table-1-style Dice table and the attention statistics behind it.

Every model is run on held-out phantom cases (generated here from a seed that no training run
uses, unless ``--data`` names a labelled dataset) as ``evaluate`` runs it: the card's preprocessing
(and resampling, for models trained with ``--spacing``), ``predict`` in its default exact (whole) mode,
Dice on the source grid. Printed:

1. Dice per class and mean Dice, as mean +- standard deviation over cases (like the paper's Table 1);
2. for every autofocus model, the mean expected dilation rate (sum_k attention_k * rate_k) of each
   autofocus layer inside ground-truth small lesions, large lesions, and lesion-free tissue
   (inside the brain-like ROI); for generated "nodules" cases also inside the look-alike masses
   (taken out of tissue). "Zooms out on large structures" means large > small.

    python benchmarks/phantom_table.py                       # bundled models, 8 held-out cases
    python benchmarks/phantom_table.py --cases 20 --device cuda --json results.json
    python benchmarks/phantom_table.py --models runs/*/model.safetensors --data data/phantom_test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from napari_autofocus.errors import AutofocusError  # noqa: E402
from src_training.phantom_styles import STYLES  # noqa: E402

HELD_OUT_SEED = 7000  # training cases use seeds 0.., the bundled sample 9000: this range is unused
STRUCTURES = {"small lesion": 1, "large lesion": 2}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help="model files (default: sample_data/models/*.safetensors)")
    p.add_argument("--data", help="labelled phantom dataset folder (default: generate held-out cases)")
    p.add_argument("--cases", type=int, default=8, help="held-out cases to generate (default 8)")
    p.add_argument("--seed", type=int, default=HELD_OUT_SEED, help=f"first seed (default {HELD_OUT_SEED})")
    p.add_argument(
        "--style",
        choices=STYLES,
        default="clusters",
        help="phantom style of generated cases (default clusters)",
    )
    p.add_argument("--jobs", type=int, default=2, help="processes for generating cases (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--json", help="also write every number to this JSON file")
    p.add_argument(
        "--record",
        action="store_true",
        help="store each model's result in its model card (metrics.held_out); weights are untouched",
    )
    return p.parse_args(argv)


def held_out_dataset(args, workdir: Path) -> Path:
    from src_training.phantom_cases import PhantomConfig, write_dataset

    if args.data:
        return Path(args.data)
    out = workdir / f"phantom_heldout_{args.style}_{args.seed}"
    print(f"generating {args.cases} held-out phantom cases (seeds {args.seed}..{args.seed + args.cases - 1})")
    return write_dataset(out, args.cases, args.seed, PhantomConfig(style=args.style), jobs=args.jobs)


def hidden_parts(args, cases: list) -> dict[str, dict]:
    """Look-alike masks of generated "nodules" cases, by case name (regenerated from the seed in the name)."""
    from src_training.phantom_cases import PhantomConfig, make_case_with_parts

    if args.data or args.style != "nodules":
        return {}
    config = PhantomConfig(style=args.style)
    return {case.name: make_case_with_parts(int(case.name.rsplit("_", 1)[1]), config)[2] for case in cases}


def evaluate_model(path: Path, cases: list, n_channels: int, device: str, parts=None) -> dict:
    """Dice per structure per case and, for autofocus models, mean expected rates per region."""
    from napari_autofocus.analysis.attention_maths import expected_rate
    from napari_autofocus.analysis.metrics import dice
    from napari_autofocus.inference.predictor import PredictOptions, Scan, predict
    from napari_autofocus.nets import load_model
    from src_training.data import read_case

    model, card = load_model(path)
    if card.in_channels != n_channels:
        raise AutofocusError(f"{path} expects {card.in_channels} channel(s); the dataset has {n_channels}")
    result = {"model": path.name, "arch": card.arch, "training": card.provenance, "cases": [], "rates": {}}
    rate_sums: dict[str, dict[str, list[float]]] = {}
    for case in cases:
        raw = read_case(case, n_channels)
        start = time.perf_counter()
        scan = Scan(raw.image, raw.spacing, description=raw.geometry.description)
        # the path every caller takes: outputs on the scan's own grid
        pred, _ = predict(model, card, scan, PredictOptions(device=device, attention=True))
        seconds = time.perf_counter() - start
        truth = np.asarray(raw.label)
        labels = np.asarray(pred.labels)
        scores = {name: dice(labels == value, truth == value) for name, value in STRUCTURES.items()}
        result["cases"].append({"case": case.name, "dice": scores, "seconds": round(seconds, 2)})
        inside_roi = raw.image.max(axis=0) > 0
        regions = {
            "small lesion": truth == 1,
            "large lesion": truth == 2,
            "tissue": (truth == 0) & inside_roi,
        }
        if parts and case.name in parts:
            lookalike = parts[case.name]["look-alike"] > 0
            regions["look-alike"] = lookalike
            regions["tissue"] &= ~lookalike
        for layer, maps in pred.attention.items():
            result.setdefault("rates", {})[layer] = list(pred.rates[layer])
            rate = expected_rate(maps, pred.rates[layer])
            per_region = rate_sums.setdefault(layer, {name: [] for name in regions})
            for name, mask in regions.items():
                inside = mask & np.isfinite(rate)
                if inside.any():
                    per_region[name].append(float(rate[inside].mean()))
        print(f"  {card.arch:7s} {case.name}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    result["summary"] = summarise(result["cases"])
    result["expected_rate"] = {
        layer: {name: float(np.mean(values)) for name, values in regions.items() if values}
        for layer, regions in rate_sums.items()
    }
    return result


def summarise(cases: list[dict]) -> dict:
    """Mean and standard deviation over cases, per structure and for the mean over structures."""
    columns = {name: [c["dice"][name] for c in cases] for name in STRUCTURES}
    columns["mean"] = [float(np.mean(list(c["dice"].values()))) for c in cases]
    return {name: {"mean": float(np.mean(v)), "std": float(np.std(v))} for name, v in columns.items()}


def dice_table(results: list[dict]) -> str:
    header = "| model | iterations | " + " | ".join(f"Dice {n}" for n in STRUCTURES) + " | mean Dice |"
    lines = [header, "|" + " --- |" * (3 + len(STRUCTURES))]
    for r in sorted(results, key=lambda r: -r["summary"]["mean"]["mean"]):
        cells = [
            f"{r['summary'][n]['mean']:.3f} ± {r['summary'][n]['std']:.3f}" for n in [*STRUCTURES, "mean"]
        ]
        iterations = r["training"].get("iterations", "?")
        lines.append(f"| {r['arch']} | {iterations} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def attention_table(results: list[dict]) -> str:
    names = ["small lesion", "large lesion", "tissue"]
    if any("look-alike" in regions for r in results for regions in r["expected_rate"].values()):
        names.insert(2, "look-alike")
    lines = [
        "| model | layer | rates | " + " | ".join(names) + " |",
        "| --- | --- | --- |" + " --- |" * len(names),
    ]
    for r in results:
        for layer, regions in r["expected_rate"].items():
            cells = [f"{regions.get(n, float('nan')):.2f}" for n in names]
            lines.append(f"| {r['arch']} | {layer} | {r['rates'][layer]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def record_in_card(path: Path, result: dict, source: str) -> None:
    """Write the held-out summary into the model file's card (atomic rewrite; same weights and hash)."""
    from napari_autofocus.nets import load_model, save_model

    model, card = load_model(path)
    held_out = {"data": source, "dice": result["summary"], "expected_rate": result["expected_rate"]}
    save_model(model, path, card.replace(metrics={**card.metrics, "held_out": held_out}))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except AutofocusError as exc:
        raise SystemExit(f"error: {exc}") from None


def check_models(models: list[Path], record: bool) -> None:
    """Every model file is readable before any work starts (a bad path should not cost an hour)."""
    from napari_autofocus.nets.card import read_card

    if not models:
        raise AutofocusError("no model files given (--models) and none bundled in sample_data/models/")
    for path in models:
        if not path.is_file():
            raise AutofocusError(f"{path}: no such model file")
        if record and path.suffix != ".safetensors":
            raise AutofocusError(f"{path}: --record rewrites model files and takes .safetensors files only")
        if path.suffix == ".safetensors":
            read_card(path)  # raises a clear CheckpointError for a file that is not one of ours


def run(args) -> int:
    from src_training.data import open_dataset

    if args.cases < 1:
        raise AutofocusError(f"--cases must be at least 1, got {args.cases}")
    models = (
        [Path(m) for m in args.models]
        if args.models
        else sorted((REPO / "sample_data" / "models").glob("*.safetensors"))
    )
    check_models(models, args.record)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = open_dataset(held_out_dataset(args, Path(tmp)))
        cases = [c for c in dataset.cases if c.label is not None]
        if not cases:
            raise AutofocusError(f"{dataset.root}: no labelled cases to score")
        parts = hidden_parts(args, cases)
        results = []
        for path in models:
            print(f"{path.name}:")
            result = evaluate_model(path, cases, len(dataset.modalities), args.device, parts)
            results.append(result)
    last = args.seed + len(cases) - 1
    source = args.data or f"{len(cases)} generated '{args.style}' cases, seeds {args.seed}..{last}"
    print(f"\nDice on held-out phantom cases ({source}); mean ± std over cases\n")
    print(dice_table(results))
    if any(r["expected_rate"] for r in results):
        print("\nMean expected dilation rate per autofocus layer, inside each ground-truth region\n")
        print(attention_table([r for r in results if r["expected_rate"]]))
    if args.record:
        for path, result in zip(models, results, strict=True):
            record_in_card(path, result, source)
        print(f"\nrecorded the held-out results in the cards of {len(models)} model file(s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source, "results": results}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
