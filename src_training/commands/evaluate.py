"""``python -m src_training evaluate``: score a model on a labelled dataset, or score existing predictions.

Two modes:
- ``--model FILE --data DATASET --out DIR``: predict every chosen case through the predictor every
  caller uses (``napari_autofocus.inference.predictor``: the card's normalisation and spacing,
  outputs back on the scan's grid), write ``DIR/predictions/<case>.nii.gz`` with the source
  affine, and score. On the dataset a model was trained on, the default cases are the run's
  validation cases (``split.json``);
- ``--pred DIR --labels DIR``: score prediction files against label files matched by case name.
Both write ``metrics.json`` and ``metrics.csv`` (to ``--out``, or next to the predictions) and print
a table whose header states the metric conventions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_autofocus.app.model_library import model_file
from napari_autofocus.errors import AutofocusError, DatasetError
from napari_autofocus.inference.scan_checks import NONFINITE_CHOICES, check_channel_count
from src_training.cohort import add_cohort_options

EXAMPLES = """examples:
  python -m src_training evaluate --model runs/afn6/model.safetensors --data Task01_BrainTumour \\
      --out eval/afn6 --regions msd
  python -m src_training evaluate --pred eval/afn6/predictions --labels Task01_BrainTumour/labelsTr \\
      --regions msd --hd-empty penalty
"""


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Dice, HD95 (pooled symmetric surface distances, mm), sensitivity and specificity per "
        "case, per class and per region, with mean and std over cases.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="model file (.safetensors) or run folder to predict with; needs --data")
    p.add_argument("--data", help="dataset folder (Decathlon / nnU-Net v2 raw) with labels")
    p.add_argument(
        "--cases",
        help="comma-separated case names, or 'all' (default: the run's validation cases from split.json when "
        "the model was trained on this dataset, else every labelled case)",
    )
    p.add_argument("--pred", help="folder of predicted label maps (<case>.nii.gz); needs --labels")
    p.add_argument("--labels", help="folder of ground-truth label maps (<case>.nii.gz)")
    p.add_argument("--out", help="folder for predictions and metrics (default: --pred folder)")
    p.add_argument(
        "--regions",
        default="auto",
        help="brats2015, brats2017, msd, dataset, none, or auto (= dataset.json / model card regions)",
    )
    p.add_argument(
        "--hd-empty",
        choices=["nan", "penalty"],
        default="nan",
        help="HD95 when exactly one mask is empty: NaN (default) or the image diagonal in mm",
    )
    p.add_argument("--device", default="auto", help="inference device for --model (auto/cpu/cuda/mps)")
    p.add_argument(
        "--nonfinite",
        choices=NONFINITE_CHOICES,
        default="error",
        help="NaN or infinite image voxels (--model): refuse (default) or set them to the background value 0",
    )
    add_cohort_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from src_training.evaluation import format_table, report, write_report

    if args.model:
        if not args.data:
            args.data = _training_data(args.model)
        if not args.data or not args.out:
            raise AutofocusError("--model needs --data (labelled dataset) and --out (where to write)")
        cases, settings = _predict_and_score(args)
        if settings is None:  # another rank writes the cohort's metrics
            return 0
        out = Path(args.out)
    elif args.pred and args.labels:
        if args.num_parts != 1 or args.resume or args.keep_going:
            raise AutofocusError("--num-parts, --continue and --keep-going apply to --model runs, not --pred")
        cases, settings = _score_folders(args)
        out = Path(args.out or args.pred)
    else:
        raise AutofocusError("give either --model FILE --data DATASET --out DIR, or --pred DIR --labels DIR")
    result = report(cases, settings)
    part = settings.get("part")
    name = f"metrics_part{part['part_id'] + 1:03d}of{part['num_parts']:03d}" if part else "metrics"
    json_path, csv_path = write_report(result, out, name)
    print(format_table(result))
    print(f"\nwrote {json_path} and {csv_path}")
    if part:
        print(
            "this is one part of the cohort: once every part is done, the same command with --continue "
            "and without --num-parts scores all cases from their predictions",
            flush=True,
        )
    return 3 if settings.get("failed") else 0


def _wanted_cases(dataset, names: str | None, split: dict | None):
    """The cases to score and a note on how they were chosen (None when there is nothing to say).

    With a run's ``split`` (the model was trained on this dataset), the default is the run's
    validation cases; ``--cases all`` scores every labelled case and names the training cases.
    """
    labelled = [c for c in dataset.cases if c.label is not None]
    if not labelled:
        raise DatasetError(f"{dataset.root}: no labelled cases to evaluate")
    trained = set(split["train"]) if split else set()
    if names and names.strip().lower() != "all":
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        cases = [dataset.case(n) for n in wanted]
    elif split and not names:
        val = set(split["val"])
        cases = [c for c in labelled if c.name in val]
        if not cases:
            raise DatasetError(
                f"{dataset.root}: none of the run's {len(val)} validation case(s) is here; "
                "give --cases all to score every case"
            )
        return cases, (
            f"scoring the run's {len(cases)} validation case(s) from split.json; "
            "--cases all scores every case"
        )
    else:
        cases = labelled
    used = [c.name for c in cases if c.name in trained]
    if used:
        shown = ", ".join(used[:10]) + (" ..." if len(used) > 10 else "")
        if not split.get("verified", True):
            return cases, (
                f"{len(used)} of the {len(cases)} scored case(s) share their names with this model's "
                f"training cases ({shown}); the model file records no fingerprint of its training data, "
                "so this is judged by name only"
            )
        return cases, f"{len(used)} of the {len(cases)} scored case(s) were used to train this model: {shown}"
    return cases, None


def _training_data(model: str) -> str | None:
    """The dataset a model was trained on, when its card names a folder that exists here."""
    from napari_autofocus.nets.card import read_card

    path = model_file(model)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    data = read_card(path).provenance.get("dataset_path")
    if data and Path(data).is_dir():
        print(f"note: --data not given; using the dataset this model was trained on: {data}", flush=True)
        return str(data)
    return None


def run_split(path: Path, card, dataset) -> dict | None:
    """The run's train/validation split when this model was trained on ``dataset``.

    Read from ``split.json`` beside the model file (a run folder), or else from the card, which
    names the validation cases; None when the model comes from another dataset.
    """
    import json

    if card.provenance.get("dataset") != dataset.name:
        return None
    split_file = path.parent / "split.json"
    split = None
    if split_file.is_file():
        try:
            raw = json.loads(split_file.read_text())
            split = {"train": list(raw["train"]), "val": list(raw["val"])}
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            raise AutofocusError(
                f"{split_file}: not a readable run split (expected train and val lists)"
            ) from None
    val = card.provenance.get("val_cases")
    if split is None and isinstance(val, list):
        split = {"train": [c.name for c in dataset.cases if c.name not in set(val)], "val": val}
    if split is None:
        return None
    return _same_training_data(split, card, dataset)


def _same_training_data(split: dict, card, dataset) -> dict | None:
    """The split when ``dataset`` holds the cases the model was trained on, checked by their
    fingerprint (names and file sizes); a dataset that only shares the name is not it. Cards from
    before fingerprints are matched by names, and the split says so (``verified`` False)."""
    from src_training.data import case_fingerprint

    fingerprint = card.provenance.get("train_fingerprint")
    names = {c.name for c in dataset.cases}
    if fingerprint is None:
        return {**split, "verified": False}
    if not set(split["train"]) <= names:
        return None
    trained = [dataset.case(n) for n in split["train"]]
    return {**split, "verified": True} if case_fingerprint(trained) == fingerprint else None


def check_labels(dataset, cases) -> None:
    """Read every case's label file and report all problems at once (values, integers, files)."""
    from napari_autofocus.errors import NiftiError
    from napari_autofocus.io.nifti import load_nifti
    from src_training.data import check_label_values

    problems = []
    for case in cases:
        try:
            data = load_nifti(case.label).data
        except NiftiError as exc:
            problems.append(f"case {case.name}: {exc}")
            continue
        if data.ndim != 3:
            problems.append(
                f"case {case.name}: {case.label.name} is {data.ndim}D; a label map is one 3D volume"
            )
        elif not np.isfinite(data).all() or not np.allclose(data, np.round(data)):
            problems.append(f"case {case.name}: {case.label.name} holds non-integer values")
        else:
            problem = check_label_values(
                case.name, case.label, np.round(data).astype(np.int64), dataset.label_values
            )
            if problem:
                problems.append(problem)
    if problems:
        raise DatasetError(
            f"{len(problems)} label problem(s), nothing was predicted:\n  " + "\n  ".join(problems)
        )


def _predict_and_score(args):
    from napari_autofocus.io.nifti import load_nifti
    from napari_autofocus.io.prediction_files import labels_name, refuse_foreign
    from napari_autofocus.nets import load_model
    from src_training.cohort import (
        file_digest,
        launcher_ranks,
        rank_device,
        record_failures,
        run_pipeline,
        shard_from,
        summary_line,
    )
    from src_training.data import open_dataset, read_case
    from src_training.evaluation import choose_regions, class_structures, score_case

    path = model_file(args.model)
    model, card = load_model(path)
    dataset = open_dataset(args.data)
    split = run_split(path, card, dataset)
    cases, note = _wanted_cases(dataset, args.cases, split)
    if note:
        print(f"note: {note}", flush=True)
    shard = shard_from(args.num_parts, args.part_id)  # before any output is looked at
    order = {case.name: i for i, case in enumerate(cases)}
    mine = [dataset.case(name) for name in sorted(shard.take(list(order)), key=order.get)]
    mine, refused = checked_cases(dataset, mine, args.keep_going)
    given = ", ".join(dataset.modalities)
    check_channel_count(card, len(dataset.modalities), f"{args.model}: ", f" in {args.data} ({given})")
    class_names = {int(k): v for k, v in card.class_names.items()} or dataset.class_names
    classes = class_structures(class_names)
    regions = choose_regions(args.regions, card.regions or dataset.regions)
    pred_dir = Path(args.out) / "predictions"
    for case in mine:  # evaluate replaces its own earlier predictions, never a file it did not write
        refuse_foreign(pred_dir, case.name, [labels_name(case.name)])
    request = {"model_sha256": file_digest(path), "nonfinite": args.nonfinite}
    done = _complete_predictions(pred_dir, mine, request) if args.resume else []
    if done:
        print(f"{len(done)} of {len(mine)} case(s) already predicted (--continue): scored from their files")
    if not shard.is_whole:
        print(f"{shard.label()}: {len(mine)} of {len(cases)} case(s)", flush=True)
    rank, world = launcher_ranks()
    args.device = rank_device(args.device)
    results, warned = {}, set()
    for name in done:  # one case in memory at a time, however large the cohort; no image is read
        truth = load_nifti(dataset.case(name).label)  # checked above, on the images' grid
        labels = np.round(load_nifti(pred_dir / labels_name(name)).data).astype(np.int64)
        expected = np.round(truth.data).astype(np.int16)
        results[name] = score_case(
            name, labels, expected, truth.geometry.spacing, classes, regions, args.hd_empty
        )
        del truth, labels, expected

    def compute(name, raw):
        pred, report = predict_case_of(model, card, dataset, raw, args)
        for warning in report.warnings:
            if warning not in warned:  # the same mismatch on every case is said once
                print(f"warning: {warning}", flush=True)
                warned.add(warning)
        return raw, np.asarray(pred.labels), report

    def write(name, computed):
        raw, labels, report = computed
        write_prediction(pred_dir, raw, labels, args, request, report)
        results[name] = score_case(name, labels, raw.label, raw.spacing, classes, regions, args.hd_empty)
        text = ", ".join(f"{k} {v['dice']:.3f}" for k, v in results[name]["classes"].items())
        print(f"{name}: {text}", flush=True)

    todo = [case.name for case in mine if case.name not in done]
    run = run_pipeline(
        todo,
        read=lambda name: read_case(dataset.case(name), len(dataset.modalities)),
        compute=compute,
        write=write,
        files_of=lambda name: [str(p) for p in dataset.case(name).images],
        keep_going=args.keep_going,
        overlap=args.overlap,
    )
    run.failed = refused + run.failed
    record_failures(Path(args.out), "evaluate", shard, run.failed)
    if len(cases) > 1 or run.failed:
        print(summary_line(run, len(done), shard, verb="predicted and scored"), flush=True)
    for failure in run.failed:
        print(f"  failed: {failure.case}: {failure.reason}", flush=True)
    scored = [results[name] for name in sorted(results, key=order.get)]
    failed = [f.case for f in run.failed]
    if world > 1:
        scored, failed, warned = gather_scores(scored, failed, warned, order)
        if rank != 0:
            return None, None
    settings = {
        "mode": "model",
        "model": str(args.model),
        "data": str(args.data),
        "cases": [c["case"] for c in scored],
        "case_choice": note,
        "part": None if args.num_parts == 1 else {"part_id": args.part_id, "num_parts": args.num_parts},
        "failed": failed,
        "warnings": sorted(warned),
        "regions": regions,
        "classes": classes,
        "hd_empty": args.hd_empty,
        "predictions": str(pred_dir),
    }
    return scored, settings


def checked_cases(dataset, cases, keep_going: bool):
    """(cases that pass the geometry and label checks, failures), before anything is predicted.

    Without ``keep_going`` every problem of every case is raised at once; with it, a case with a
    problem becomes a failure of its own and the others go on."""
    from src_training.cohort import CaseFailure
    from src_training.data import check_geometry

    if not keep_going:
        check_geometry(dataset, cases)
        check_labels(dataset, cases)  # every label, before anything is predicted or written
        return cases, []
    good, refused = [], []
    for case in cases:
        try:
            check_geometry(dataset, [case])
            check_labels(dataset, [case])
        except DatasetError as exc:
            reason = str(exc).split("\n", 1)[-1].strip()
            refused.append(CaseFailure(case.name, [str(p) for p in case.images], reason))
            continue
        good.append(case)
    return good, refused


def predict_case_of(model, card, dataset, raw, args):
    from napari_autofocus.inference.predictor import PredictOptions, Scan, predict

    scan = Scan(raw.image, raw.spacing, channel_names=dataset.modalities, strict_names=True,
                description=raw.geometry.description, source=f"case {raw.name}", owned=True)  # fmt: skip
    return predict(model, card, scan, PredictOptions(device=args.device, nonfinite=args.nonfinite))


def write_prediction(pred_dir: Path, raw, labels, args, request: dict, report) -> None:
    from napari_autofocus.io.prediction_files import OutputFile, labels_name, write_outputs

    info = {"case": raw.name, "model": str(args.model), "request": request,
            "preprocessing": report.to_dict()}  # fmt: skip
    files = [OutputFile(labels_name(raw.name), lambda: labels, is_label=True)]
    write_outputs(pred_dir, raw.name, files, raw.geometry, info, overwrite=True)


def _complete_predictions(pred_dir: Path, cases, request: dict) -> list[str]:
    """Cases this tool predicted completely with the same model and options."""
    from napari_autofocus.io.prediction_files import complete_record

    found = []
    for case in cases:
        record = complete_record(pred_dir, case.name)
        if record and record.get("request") == request:
            found.append(case.name)
    return found


def gather_scores(scored: list, failed: list, warned: set, order: dict):
    """Every rank's scores, failures and warnings, on every rank, in the cohort's case order."""
    from src_training.cohort import gather_from_ranks

    gathered = gather_from_ranks((scored, failed, sorted(warned)))
    scores = sorted((c for part in gathered for c in part[0]), key=lambda c: order[c["case"]])
    return scores, sorted(f for part in gathered for f in part[1]), {w for part in gathered for w in part[2]}


def _nifti_files(folder: Path) -> dict[str, Path]:
    from napari_autofocus.io.nifti import strip_nifti_suffix

    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    files = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith((".nii", ".nii.gz")) and not path.name.startswith("."):
            files[strip_nifti_suffix(path)] = path
    return files


def _score_folders(args):
    from napari_autofocus.errors import NiftiError
    from napari_autofocus.io.nifti import load_nifti
    from src_training.data import open_dataset
    from src_training.evaluation import choose_regions, class_structures, score_case

    preds, truths = _nifti_files(Path(args.pred)), _nifti_files(Path(args.labels))
    if args.cases:
        wanted = {n.strip() for n in args.cases.split(",")}
        truths = {k: v for k, v in truths.items() if k in wanted}
    from napari_autofocus.io.prediction_files import interrupted

    broken = sorted(name for name in truths if interrupted(args.pred, name))
    if broken:
        raise DatasetError(
            f"{args.pred}: the prediction of {len(broken)} case(s) was interrupted while being written "
            f"({', '.join(broken[:10])}); predict them again"
        )
    missing = sorted(set(truths) - set(preds))
    if not truths:
        raise DatasetError(f"{args.labels}: no label files (.nii/.nii.gz)")
    if missing:
        raise DatasetError(
            f"{args.pred}: no prediction for {len(missing)} labelled case(s): {', '.join(missing[:10])}; "
            f"expected files named like the labels ({missing[0]}.nii.gz or {missing[0]}.nii), found "
            + (", ".join(p.name for p in list(preds.values())[:5]) or "no NIfTI files")
            + (" ..." if len(preds) > 5 else "")
        )
    dataset = open_dataset(args.data) if args.data else None
    from napari_autofocus.io.prediction_files import interrupted

    loaded, problems, values = {}, [], set()
    for name, truth_path in truths.items():
        if interrupted(args.pred, name):
            problems.append(
                f"case {name}: its prediction was interrupted while being written; predict it again"
            )
            continue
        try:
            truth, pred = load_nifti(truth_path), load_nifti(preds[name])
        except NiftiError as exc:
            problems.append(f"case {name}: {exc}")
            continue
        if truth.data.shape != pred.data.shape:
            problems.append(
                f"case {name}: prediction shape {pred.data.shape} differs from label shape {truth.data.shape}"
            )
        elif not np.allclose(truth.geometry.source_affine, pred.geometry.source_affine, atol=1e-3):
            problems.append(
                f"case {name}: prediction and label have different affines (not on the same grid)"
            )
        elif not (np.isfinite(pred.data).all() and np.isfinite(truth.data).all()):
            which = "prediction" if not np.isfinite(pred.data).all() else "label"
            problems.append(f"case {name}: the {which} file holds NaN or infinite values")
        else:
            t, p = np.round(truth.data).astype(np.int64), np.round(pred.data).astype(np.int64)
            loaded[name] = (p, t, truth.geometry.spacing)
            values |= set(np.unique(t).tolist()) | set(np.unique(p).tolist())
    if problems:
        raise DatasetError(f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if dataset is not None:
        class_names = dataset.class_names
    else:
        class_names = {v: f"class {v}" for v in sorted(values | {0})}
    classes = class_structures(class_names)
    regions = choose_regions(args.regions, dataset.regions if dataset else None)
    results = [score_case(n, p, t, s, classes, regions, args.hd_empty) for n, (p, t, s) in loaded.items()]
    settings = {
        "mode": "folders",
        "pred": str(args.pred),
        "labels": str(args.labels),
        "regions": regions,
        "classes": classes,
        "hd_empty": args.hd_empty,
    }
    return results, settings
