"""bf16 against fp32 on the bundled sample scans, every bundled model, side by side in one run.

Each model runs on its own sample (``*_brain`` on the MNI152 brain sample, ``*_phantom`` on the
phantom) the way Segment runs it: the card's preprocessing and ``predict`` in exact whole mode,
attention captured. Per model, fp32 and bf16 alternate in the same process (a warm-up pass of each,
then three timed runs each; the fastest counts), printed: wall time of each and their ratio, the
share of foreground voxels whose label agrees, the Dice of each against the sample's ground truth
(mean over its labels), and the largest and mean difference of the attention weights. bf16 needs
native bf16 (AVX-512 BF16 / AMX, or a GPU).

    python benchmarks/precision.py                 # every bundled model, about 15 minutes on 2 cores
    python benchmarks/precision.py --models AFN6_brain BASIC_brain --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = REPO / "sample_data" / "models"
REPEATS = 3  # timed runs of each precision, alternating; the fastest counts (a shared machine is noisy)


def dice_mean(labels: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the labels the ground truth has (background excluded)."""
    from napari_autofocus.analysis.metrics import dice

    values = [v for v in np.unique(truth) if v > 0]
    return float(np.mean([dice(labels == v, truth == v) for v in values])) if values else float("nan")


def compare(name: str, device: str) -> dict:
    """fp32 and bf16 predictions of one bundled model on its sample, and how they differ."""
    from napari_autofocus._sample_data import sample_paths
    from napari_autofocus.inference.predictor import PredictOptions, Scan, predict
    from napari_autofocus.io.nifti import load_nifti
    from napari_autofocus.nets import load_model

    model, card = load_model(MODELS / f"{name}.safetensors")
    image_path, label_path = sample_paths(name.rsplit("_", 1)[1])
    scan = load_nifti(image_path)
    image = scan.data if scan.data.ndim == 4 else scan.data[None]
    truth = np.round(load_nifti(label_path).data).astype(np.int16)
    runs, seconds = {}, {"fp32": [], "bf16": []}
    for precision in ("fp32", "bf16") + ("fp32", "bf16") * REPEATS:  # the first of each warms up
        start = time.perf_counter()
        options = PredictOptions(device=device, attention=True, precision=precision)
        runs[precision], _ = predict(
            model, card, Scan(image.astype(np.float32), scan.geometry.spacing), options
        )
        seconds[precision].append(time.perf_counter() - start)
    seconds = {k: min(v[1:]) for k, v in seconds.items()}  # the best of the timed repeats
    fp32, bf16 = runs["fp32"], runs["bf16"]
    foreground = (image != 0).any(0) & fp32.computed
    diffs = [np.abs(bf16.attention[n].astype(np.float32) - a.astype(np.float32))[:, foreground]
             for n, a in fp32.attention.items()]  # fmt: skip
    return {
        "model": name,
        "fp32_s": round(seconds["fp32"], 2),
        "bf16_s": round(seconds["bf16"], 2),
        "speedup": round(seconds["fp32"] / seconds["bf16"], 2),
        "labels_agree": round(float((fp32.labels[foreground] == bf16.labels[foreground]).mean()), 5),
        "dice_fp32": round(dice_mean(fp32.labels, truth), 4),
        "dice_bf16": round(dice_mean(bf16.labels, truth), 4),
        "attention_max_diff": round(float(max((d.max() for d in diffs), default=0.0)), 4) if diffs else None,
        "attention_mean_diff": round(float(np.mean([d.mean() for d in diffs])), 5) if diffs else None,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = sorted(p.stem for p in MODELS.glob("*.safetensors"))
    parser.add_argument("--models", nargs="+", choices=names, default=names)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models:
        rows.append(compare(name, args.device))
        if not args.json:
            print(f"  {name} done", flush=True)
    if args.json:
        print(json.dumps({"device": args.device, "runs": rows}))
        return 0
    print(f"\nbf16 against fp32 on the bundled samples ({args.device})\n")
    print(f"{'model':15s} {'fp32 s':>7s} {'bf16 s':>7s} {'speedup':>8s} {'labels=':>8s} {'Dice fp32':>10s} "
          f"{'Dice bf16':>10s} {'max |da|':>9s} {'mean |da|':>10s}")  # fmt: skip
    for r in rows:
        maximum = f"{r['attention_max_diff']:.4f}" if r["attention_max_diff"] is not None else "-"
        mean = f"{r['attention_mean_diff']:.5f}" if r["attention_mean_diff"] is not None else "-"
        dice = f"{r['dice_fp32']:10.4f} {r['dice_bf16']:10.4f}"
        print(f"{r['model']:15s} {r['fp32_s']:7.2f} {r['bf16_s']:7.2f} {r['speedup']:7.2f}x "
              f"{r['labels_agree']:8.5f} {dice} {maximum:>9s} {mean:>10s}")  # fmt: skip
    print("\nlabels=: share of the foreground voxels (non-zero in any channel) whose label agrees")
    return 0


if __name__ == "__main__":
    sys.exit(main())
