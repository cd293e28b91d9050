"""``python -m src_training explain``: attention statistics over a cohort of ``predict --attention`` outputs.

Per case, structure (each class and region) and autofocus layer: the mean weight per rate, the
mean expected rate and normalised entropy, and the attention-mask agreement per rate (the ROC AUC
of the rate's weight as a detector of the structure: 0.5 = no relation; see
``napari_autofocus.analysis.attention_statistics``); per lesion-size bin where the labels have
lesions. The structures come from the ground truth given with --labels, or else from the
predicted label maps (then it says what the network attends to where it *thinks* a structure is).

Each case's numbers go to ``OUT/cases/<case>_explain.json``; the cohort summary is
``OUT/explain.json``, ``explain.csv`` (per case, structure and layer, plus mean and std rows),
``explain_sizes.csv`` (pooled per size bin) and ``explain.png``. Shardable like ``predict``:
parts (``--num-parts/--part-id``) write their cases only, and the same command with
``--continue`` and without ``--num-parts`` then writes the summary without recomputing; under
torchrun, rank 0 writes it when every rank is done.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from napari_autofocus.errors import AutofocusError, DatasetError
from napari_autofocus.io.prediction_files import WRITTEN_BY
from src_training.cohort import add_cohort_options
from src_training.evaluation import json_ready

SUMMARY_FILES = ("explain.json", "explain.csv", "explain_sizes.csv", "explain.png")
MAX_RECORD_BYTES = 64 * 2**20


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m src_training predict --model afn6.safetensors --input imagesTs/ --out pred/ "
        "--attention\n"
        "  python -m src_training explain --pred pred/ --labels labelsTs/ --out explain/\n"
        "  torchrun --nproc-per-node 8 -m src_training explain --pred pred/ --labels labelsTs/ "
        "--out explain/",
    )
    p.add_argument("--pred", required=True, help="folder of `predict --attention` outputs")
    p.add_argument(
        "--labels", help="folder of ground-truth label maps <case>.nii.gz (default: the predicted ones)"
    )
    p.add_argument("--data", help="dataset folder whose dataset.json names the classes and regions")
    p.add_argument("--out", required=True, help="folder for the per-case records and the summary")
    p.add_argument(
        "--size-bins",
        default="10,20,40",
        help="lesion diameter bin edges in mm, increasing (default 10,20,40; 'none': one bin of all lesions)",
    )
    add_cohort_options(p)
    p.set_defaults(func=run)


def size_edges(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        edges = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise AutofocusError(
            f"--size-bins {text!r}: expected comma-separated numbers in mm, e.g. 10,20,40"
        ) from None
    if (
        len(edges) > 32
        or any(not np.isfinite(e) or e <= 0 for e in edges)
        or list(edges) != sorted(set(edges))
    ):
        raise AutofocusError(f"--size-bins {text!r}: expected up to 32 increasing positive diameters in mm")
    return edges


def run(args) -> int:
    from src_training.cohort import (
        gather_from_ranks,
        launcher_ranks,
        record_failures,
        run_pipeline,
        shard_from,
        summary_line,
    )

    pred = Path(args.pred)
    edges = size_edges(args.size_bins)
    cases = attention_cases(pred)
    labels_dir = Path(args.labels) if args.labels else None
    if labels_dir is not None and not labels_dir.is_dir():
        raise DatasetError(f"--labels {labels_dir}: no such folder")
    shard = shard_from(args.num_parts, args.part_id)
    mine = shard.take(list(cases))
    out = Path(args.out)
    records = out / "cases"
    for case in mine:
        refuse_foreign(records / record_name(case))
    names, regions = structure_names(args, next(iter(cases.values())))
    settings = {"size_bins_mm": list(edges), "labels": "ground truth" if labels_dir else "predicted"}
    todo, complete = [], []
    for case in mine:
        record = read_record(records / record_name(case))
        if args.resume and record and record.get("source") == source_of(pred, case, labels_dir, settings):
            complete.append(case)
        else:
            todo.append(case)
    if not shard.is_whole:
        print(f"{shard.label()}: {len(mine)} of {len(cases)} case(s), {len(complete)} already explained")
    elif complete:
        print(f"{len(complete)} of {len(cases)} case(s) already explained (--continue): skipped", flush=True)
    records.mkdir(parents=True, exist_ok=True)

    numbered = {case: i for i, case in enumerate(todo, 1)}

    def read(case):
        return read_case(case, label_path(pred, case, labels_dir))

    def compute(case, loaded):
        print(f"[{numbered[case]}/{len(todo)}] {case}", flush=True)
        return explain_case(pred, case, cases[case], loaded, names, regions, edges)

    def write(case, result):
        result["source"] = source_of(pred, case, labels_dir, settings)
        write_record(records / record_name(case), result)

    report = run_pipeline(
        todo, read=read, compute=compute, write=write, keep_going=args.keep_going,
        overlap=args.overlap,
        files_of=lambda case: [str(p) for p in attention_files(pred, case, cases[case])],
    )  # fmt: skip
    record_failures(out, "explain", shard, report.failed)
    if len(cases) > 1 or report.failed:
        print(summary_line(report, len(complete), shard, verb="explained"), flush=True)
    for failure in report.failed:
        print(f"  failed: {failure.case}: {failure.reason}", flush=True)
    rank, world = launcher_ranks()
    if world > 1:
        gather_from_ranks(None)  # every rank's records are written before rank 0 reads them
    if args.num_parts > 1:
        print(
            "this is one part of the cohort: once every part is done, the same command with --continue and "
            "without --num-parts writes the summary of all cases",
            flush=True,
        )
    elif rank == 0:
        written = write_summary(out, list(cases), settings)
        print(f"wrote {', '.join(str(p) for p in written)}", flush=True)
    return 3 if report.failed else 0


def attention_cases(pred: Path) -> dict[str, dict]:
    """Cases of ``pred`` with a complete prediction of this tool that includes attention maps."""
    from napari_autofocus.io.prediction_files import info_name, own_record

    if not pred.is_dir():
        raise DatasetError(f"--pred {pred}: no such folder")
    found, without = {}, []
    for path in sorted(pred.glob("*_prediction.json")):
        case = path.name[: -len("_prediction.json")]
        record = own_record(pred, case)
        if record is None or path.name != info_name(case):
            continue
        if any(name.endswith("_attention.nii.gz") for name in record.get("outputs", [])):
            found[case] = record
        else:
            without.append(case)
    if not found:
        hint = (
            f" ({len(without)} prediction(s) without attention: run predict with --attention)"
            if without
            else ""
        )
        raise DatasetError(f"--pred {pred}: no predictions of napari-autofocus with attention maps{hint}")
    return found


def attention_files(pred: Path, case: str, record: dict) -> list[Path]:
    """The attention maps a case's prediction JSON lists (names of this stem only)."""
    from napari_autofocus.io.prediction_files import is_output_name

    names = record.get("outputs") or []
    return [pred / n for n in names if n.endswith("_attention.nii.gz") and is_output_name(case, n)]


def layer_name(case: str, filename: str) -> str:
    return filename[len(case) + 1 : -len("_attention.nii.gz")]


def structure_names(args, record: dict) -> tuple[dict[int, str], dict[str, list[int]]]:
    """Class names and regions: from --data's dataset.json, else from the model card of the predictions."""
    card = record.get("model_card") or {}
    names = {int(k): str(v) for k, v in (card.get("class_names") or {}).items()}
    regions = {str(k): [int(v) for v in vs] for k, vs in (card.get("regions") or {}).items()}
    if args.data:
        from src_training.data import open_dataset

        dataset = open_dataset(args.data)
        names, regions = dataset.class_names, dataset.regions or regions
    return names, regions


def label_path(pred: Path, case: str, labels_dir: Path | None) -> Path:
    """The case's label map: ``--labels``' <case>.nii.gz (or .nii), else the predicted one."""
    from napari_autofocus.io.prediction_files import labels_name

    if labels_dir is None:
        return pred / labels_name(case)
    path = labels_dir / labels_name(case)
    plain = labels_dir / f"{case}.nii"
    return plain if not path.is_file() and plain.is_file() else path


def read_case(case: str, path: Path):
    """(labels, geometry) of a case, on the grid of its predictions."""
    from napari_autofocus.io.nifti import load_nifti

    if not path.is_file():
        raise DatasetError(f"{case}: no label map {path}")
    volume = load_nifti(path)
    if volume.data.ndim != 3:
        raise DatasetError(f"{case}: {path.name} is {volume.data.ndim}D; a label map is one 3D volume")
    data = volume.data
    if not np.issubdtype(data.dtype, np.integer) and (
        not np.isfinite(data).all() or not np.allclose(data, np.round(data))
    ):
        raise DatasetError(f"{case}: {path.name} holds non-integer values; expected a label map")
    labels = np.round(data).astype(np.int64)
    if labels.min(initial=0) < 0 or labels.max(initial=0) > 999:
        raise DatasetError(f"{case}: {path.name} holds label values outside 0..999")
    return labels, volume.geometry


def explain_case(pred: Path, case: str, record: dict, loaded, names, regions, edges) -> dict:
    """The per-case record: statistics per structure and layer, and per size bin."""
    from napari_autofocus.analysis import attention_statistics as stats
    from napari_autofocus.io.nifti import load_nifti

    labels, geometry = loaded
    rates = {}
    structures = {
        names.get(v, f"class {v}"): [v] for v in sorted(set(names) | set(np.unique(labels).tolist()))
    }
    structures.update({f"{name} (region)": values for name, values in regions.items()})
    bins, per_bin = stats.lesion_sizes(labels, geometry.spacing, edges)
    layers, sizes = {}, {}
    card = record.get("model_card") or {}
    for path in attention_files(pred, case, record):
        layer = layer_name(case, path.name)
        volume = load_nifti(path)
        attention = volume.data
        if attention.ndim != 4 or attention.shape[1:] != labels.shape:
            raise DatasetError(
                f"{case}: {path.name} has shape {attention.shape}; expected (rates, {labels.shape}), "
                "the label map's grid"
            )
        if not np.allclose(volume.geometry.source_affine, geometry.source_affine, atol=1e-3):
            raise DatasetError(
                f"{case}: {path.name} and the label map are not on the same grid (affines differ)"
            )
        rates[layer] = layer_rates(card, attention.shape[0])
        layers[layer] = stats.layer_statistics(attention, rates[layer], labels, structures)
        sizes[layer] = {
            stats.size_bin_names(edges)[b]: entry
            for b, entry in stats.size_statistics(attention, bins, per_bin).items()
        }
        del attention, volume
    return {
        "written_by": WRITTEN_BY,
        "case": case,
        "rates": rates,
        "spacing_mm": [float(s) for s in geometry.spacing],
        "structures": structures,
        "layers": layers,
        "size_bins": sizes,
    }


def layer_rates(card: dict, count: int) -> list[int]:
    rates = [int(r) for r in card.get("dilations") or []]
    if len(rates) != count:
        raise DatasetError(f"the model card lists dilation rates {rates}, but the attention has {count} maps")
    return rates


def source_of(pred: Path, case: str, labels_dir: Path | None, settings: dict) -> dict:
    """What a case's record was computed from; --continue reuses a record only when it matches."""
    from src_training.cohort import file_digest

    labels = label_path(pred, case, labels_dir)
    return {
        "prediction_json_sha256": file_digest(pred / f"{case}_prediction.json"),
        "labels": str(labels),
        "labels_bytes": labels.stat().st_size if labels.is_file() else None,
        **settings,
    }


def record_name(case: str) -> str:
    return f"{case}_explain.json"


def read_record(path: Path) -> dict | None:
    from napari_autofocus.io.prediction_files import read_marked_json

    return read_marked_json(path, MAX_RECORD_BYTES)


def refuse_foreign(path: Path) -> None:
    if (path.exists() or path.is_symlink()) and read_record(path) is None:
        raise AutofocusError(
            f"{path} was not written by napari-autofocus, so it is not replaced; move it away"
        )


def write_record(path: Path, record: dict) -> None:
    from napari_autofocus.io.atomic import write_text

    refuse_foreign(path)
    write_text(path, json.dumps(json_ready(record), indent=1) + "\n")


def write_summary(out: Path, cases: list[str], settings: dict) -> list[Path]:
    """The cohort summary of every case record present (JSON, two CSVs, a plot)."""
    from napari_autofocus.io.atomic import write_text
    from src_training.explain_summary import plot_summary, size_rows, structure_rows, summarise

    summary_path = out / "explain.json"
    previous = read_record(summary_path)
    for name in SUMMARY_FILES:
        path = out / name
        if (path.exists() or path.is_symlink()) and (
            previous is None or name not in previous.get("outputs", [])
        ):
            raise AutofocusError(
                f"{path} was not written by napari-autofocus, so it is not replaced; move it away"
            )
    records = {c: r for c in cases if (r := read_record(out / "cases" / record_name(c))) is not None}
    missing = [c for c in cases if c not in records]
    summary = summarise(records)
    header, rows = structure_rows(records, summary)
    _write_csv(out / "explain.csv", header, rows)
    header, rows = size_rows(summary)
    _write_csv(out / "explain_sizes.csv", header, rows)
    plot_summary(summary, out / "explain.png")
    result = {
        "written_by": WRITTEN_BY,
        "outputs": list(SUMMARY_FILES),
        "settings": settings,
        "cases": sorted(records),
        "missing": missing,
        "conventions": {
            "mean_weight": "mean attention weight per rate over the structure's computed voxels",
            "expected_rate": "mean over the structure of sum_k a_k r_k",
            "entropy": "mean normalised entropy H(a) / log K (0 = one rate, 1 = all equal)",
            "auc": "P(weight inside > weight outside the structure) over computed voxels, ties half; "
            "0.5 = the rate does not tell the structure apart",
            "cohort": "structures: mean and std over cases of the per-case means; "
            "size bins: pooled over voxels",
        },
        **summary,
    }
    write_text(summary_path, json.dumps(json_ready(result), indent=1) + "\n")
    if missing:
        print(f"note: {len(missing)} of {len(cases)} case(s) have no record yet (e.g. {missing[0]}); "
              "the summary covers the others")  # fmt: skip
    return [out / name for name in SUMMARY_FILES]


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    from napari_autofocus.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
