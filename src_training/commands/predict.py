"""``python -m src_training predict``: segment NIfTI scans with a model file, NIfTI out.

Inputs: one 4D file, one 3D file per modality (in the model card's order), or a folder of cases
(Decathlon 4D files, or nnU-Net ``<case>_0000.nii.gz`` per channel). Each scan is prepared as the
model card says (normalisation; resampling to the model's voxel size, and back) and anything that
does not match the model is reported. Outputs per case, in the source geometry (affine and
header), named so that ``evaluate --pred`` reads them as they are: ``<case>.nii.gz`` (labels),
optionally ``<case>_probabilities.nii.gz``, every autofocus layer's attention (4D, one volume per
rate) and derived maps, and ``<case>_prediction.json`` (parameters, versions, warnings). Each case
is written to a hidden folder first and moved into place when complete; existing outputs are
checked for every case before anything runs and are not overwritten without --force.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from napari_autofocus.errors import AutofocusError
from napari_autofocus.inference.scan_checks import NONFINITE_CHOICES, check_channel_count
from napari_autofocus.io.nifti import is_nifti_path, strip_nifti_suffix
from src_training.cohort import add_cohort_options

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def register(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python -m src_training predict --model afn6.safetensors --input case.nii.gz --out pred "
        "--attention\n"
        "  python -m src_training predict --model afn6.safetensors --input flair.nii.gz t1.nii.gz t1c.nii.gz "
        "t2.nii.gz --out pred/\n"
        "  python -m src_training predict --model afn6.safetensors --input imagesTs/ --out predTs/",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="model file (.safetensors), training run folder, or a reference .pth.tar",
    )
    parser.add_argument("--arch", help="architecture of a reference checkpoint, if it cannot be inferred")
    parser.add_argument(
        "--input", required=True, nargs="+", help="4D file, one file per modality, or a folder"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--attention", action="store_true", help="write attention and derived maps")
    parser.add_argument("--probabilities", action="store_true", help="write class probabilities (4D)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps (default auto)")
    parser.add_argument(
        "--mode",
        choices=["whole", "tiled", "reference"],
        default="whole",
        help="whole: exactly one pass over the volume, no tile seams (default); tiled: independent tiles; "
        "reference: the authors' 75^3 -> 47^3 tiling",
    )
    parser.add_argument(
        "--no-crop",
        dest="crop",
        action="store_false",
        help="compute the whole volume, not just the bounding box of voxels non-zero in any channel",
    )
    parser.add_argument(
        "--memory-gib",
        type=memory_gib,
        default=2.0,
        help="memory budget (GiB, >= 0.1): the peak the process should stay under while it predicts, "
        "counting what it holds already (torch, the loaded scan); activations and outputs that do not fit "
        "go to temporary files (default 2)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="fp32 (default) or bf16: faster on GPUs and on CPUs with native bf16 (AMX), where labels can "
        "differ from fp32 on a few voxels (see the README); refused where bf16 is not native",
    )
    parser.add_argument(
        "--nonfinite",
        choices=NONFINITE_CHOICES,
        default="error",
        help="NaN or infinite input voxels: refuse the case (default) or set them to the background value 0",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs")
    add_cohort_options(parser)
    parser.set_defaults(func=run)


def memory_gib(text: str) -> float:
    """argparse type: a budget the engine can honour, or a usage error that says why."""
    from napari_autofocus.inference.engine import check_memory_budget

    try:
        return check_memory_budget(text)
    except AutofocusError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def find_cases(inputs: list[str]) -> dict[str, list[Path]]:
    """Case name -> channel files, from files or one folder."""
    paths = [Path(p) for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        files = sorted(
            p for p in paths[0].iterdir() if is_nifti_path(p) and not p.name.startswith((".", "_"))
        )
        if not files:
            raise AutofocusError(f"{paths[0]}: no .nii or .nii.gz files in this folder")
        cases: dict[str, list[Path]] = {}
        for f in files:
            match = _CHANNEL_FILE.match(strip_nifti_suffix(f))
            cases.setdefault(match["case"] if match else strip_nifti_suffix(f), []).append(f)
        return cases
    for p in paths:
        if not p.is_file():
            raise AutofocusError(f"{p}: no such file")
        if not is_nifti_path(p):
            raise AutofocusError(f"{p}: not a .nii or .nii.gz file")
    name = strip_nifti_suffix(paths[0])
    match = _CHANNEL_FILE.match(name)  # nnU-Net's <case>_0000: the case is the name without it
    return {match["case"] if match else name: paths}


def run(args) -> int:
    from napari_autofocus.app.model_library import model_file
    from napari_autofocus.io.prediction_files import complete_record
    from napari_autofocus.nets import load_model
    from src_training.cohort import (
        CohortProgress,
        launcher_ranks,
        rank_device,
        record_failures,
        run_pipeline,
        shard_from,
        summary_line,
    )

    cases = find_cases(args.input)
    shard = shard_from(args.num_parts, args.part_id)  # before any output is looked at
    mine = {case: cases[case] for case in shard.take(list(cases))}
    out = Path(args.out)
    check_out_folder(cases, out)
    path = model_file(args.model)
    request = prediction_request(args, path)
    todo, complete = plan_cases(mine, out, args, request)
    hints = {"arch": args.arch} if args.arch else {}
    model, card = load_model(path, **hints)
    if args.attention and not model.autofocus_geometry():
        print(
            f"note: {card.arch} has no autofocus layer, so --attention writes no attention maps", flush=True
        )
    if not shard.is_whole:
        print(f"{shard.label()}: {len(mine)} of {len(cases)} case(s), {len(complete)} already complete")
    elif complete:
        print(f"{len(complete)} of {len(cases)} case(s) already complete (--continue): skipped", flush=True)
    rank, _ = launcher_ranks()
    args.device = rank_device(args.device)
    progress = CohortProgress(
        list(cases), lambda case: complete_record(out, case) is not None, show=rank == 0
    )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    numbered = {case: i for i, case in enumerate(todo, 1)}

    def compute(case, loaded):
        print(f"[{numbered[case]}/{len(todo)}] {case}: {len(mine[case])} file(s)", flush=True)
        return predict_case(model, card, case, mine[case], loaded, args, quiet=len(todo) > 1)

    def write(case, computed):
        write_case(card, case, mine[case], out, computed, args, request, model.receptive_field_min)

    try:
        report = run_pipeline(
            todo,
            read=lambda case: read_case(card, case, mine[case]),
            compute=compute,
            write=write,
            files_of=lambda case: [str(f) for f in mine[case]],
            keep_going=args.keep_going,
            overlap=args.overlap,
            on_written=progress.report if len(cases) > 1 else None,
        )
    except BaseException:
        if created and not any(out.iterdir()):  # a refused run leaves no empty folder behind
            out.rmdir()
        raise
    failures = record_failures(out, "predict", shard, report.failed)
    if len(cases) > 1 or report.failed:
        print(summary_line(report, len(complete), shard), flush=True)
    for failure in report.failed:
        print(f"  failed: {failure.case} ({', '.join(failure.files)}): {failure.reason}", flush=True)
    if failures:
        print(f"  the failures are listed in {failures}", flush=True)
        return 3
    return 0


def prediction_request(args, model_path: Path) -> dict:
    """What decides a case's outputs; ``--continue`` skips a case only when its JSON records the same."""
    from src_training.cohort import file_digest

    return {
        "model_sha256": file_digest(model_path),
        "arch": args.arch,
        "mode": args.mode,
        "attention": bool(args.attention),
        "probabilities": bool(args.probabilities),
        "crop": bool(args.crop),
        "nonfinite": args.nonfinite,
        "precision": args.precision,
    }


def plan_cases(cases: dict[str, list[Path]], out: Path, args, request: dict) -> tuple[list[str], list[str]]:
    """(cases to predict, cases skipped as complete), checked for every case before anything runs.

    Without --force or --continue, existing outputs are refused; --continue skips complete cases
    made with the same settings and refuses those made with others; a killed write's leftovers
    are not a clash; files of these names that this tool did not write are always refused."""
    from napari_autofocus.io.prediction_files import (
        complete_record,
        existing_outputs,
        leftovers,
        refuse_foreign,
    )

    todo, complete, clashes, changed = [], [], {}, []
    for case in cases:
        left = set(leftovers(out, case))
        files = [p for p in existing_outputs(out, case) if p not in left]
        record = complete_record(out, case) if args.resume and not args.force else None
        if record is not None:
            recorded = record.get("request")
            if recorded == request:
                complete.append(case)
                continue
            changed.append((case, recorded))
        if files:
            clashes[case] = files
        todo.append(case)
    if changed:
        case, recorded = changed[0]
        raise AutofocusError(
            f"{len(changed)} case(s) in {out} were predicted with other settings (e.g. {case}: "
            f"{differences(recorded, request)}); --continue only skips outputs made as this run would "
            "make them: use --force to predict those cases again, or another --out"
        )
    if clashes and not (args.force or args.resume):
        case, files = next(iter(clashes.items()))
        raise AutofocusError(
            f"{len(clashes)} case(s) already have outputs in {out} (e.g. {files[0].name} of {case}); "
            "use --continue to skip complete cases, --force to overwrite them, or choose another --out"
        )
    for case in clashes:
        refuse_foreign(out, case)
    return todo, complete


def differences(recorded: dict | None, request: dict) -> str:
    if not isinstance(recorded, dict):
        return "its JSON records no settings (an older version wrote it)"
    keys = [k for k in request if recorded.get(k) != request[k]]
    shown = {"model_sha256": "a different model file"}
    return ", ".join(shown.get(k) or f"{k}={recorded.get(k)!r}, now {request[k]!r}" for k in keys)


def check_out_folder(cases: dict[str, list[Path]], out: Path) -> None:
    """Refuse an ``--out`` where an output would replace an input scan (the folder of the inputs)."""
    from napari_autofocus.io.prediction_files import is_output_name

    target = out.resolve()
    for files in cases.values():
        for path in files:
            if path.resolve().parent != target:
                continue
            for case in cases:
                if is_output_name(case, path.name):
                    raise AutofocusError(
                        f"--out {out} is the folder of the input {path.name}, and the outputs of case "
                        f"{case} would replace it; choose another --out (outputs may share the input "
                        "folder only when no output name equals an input name, as with nnU-Net's "
                        "<case>_0000 inputs)"
                    )


def channel_names(case: str, files: list[Path]) -> list[str] | None:
    """What the files say about their channels: names for one file per modality, else nothing."""
    if len(files) < 2:
        return None
    names = [strip_nifti_suffix(f) for f in files]
    if all(_CHANNEL_FILE.match(n) for n in names):  # nnU-Net's <case>_0000: numbers, not names
        return None
    return [n[len(case) :].lstrip("_-") or n if n.startswith(case) else n for n in names]


def read_case(card, case: str, files: list[Path]):
    """(image, geometry) of one case, with its channel count checked against the model."""
    from napari_autofocus.io.nifti import load_multichannel

    image, geometry = load_multichannel(files)
    hint = "; give one 4D file or one file per modality in that order"
    check_channel_count(card, image.shape[0], f"{case}: ", hint)
    return image, geometry


def predict_case(model, card, case: str, files: list[Path], loaded, args, quiet: bool = False):
    """Predict one read case through the predictor: (prediction, report, geometry)."""
    from napari_autofocus.inference.predictor import Scan, predict

    image, geometry = loaded

    def progress(done: int, total: int) -> None:
        if not quiet:
            print(f"  step {done}/{total}", end="\r" if done < total else "\n", flush=True)

    scan = Scan(
        image,
        geometry.spacing,
        channel_names=channel_names(case, files),
        description=geometry.description,
        source=", ".join(str(f) for f in files),
        owned=True,  # loaded here for this case alone: normalised in place
    )
    prediction, report = predict(model, card, scan, prediction_options(args), progress=progress)
    del scan
    del image, loaded  # normalised in place and no longer needed: room for writing the outputs
    for warning in report.warnings:
        print(f"  warning: {case + ': ' if quiet else ''}{warning}", flush=True)
    return prediction, report, geometry


def prediction_options(args):
    """The command line's choices as the predictor's options."""
    from napari_autofocus.inference.predictor import PredictOptions

    return PredictOptions(
        mode=args.mode, device=args.device, probabilities=args.probabilities, attention=args.attention,
        crop=args.crop, nonfinite=args.nonfinite, memory_budget_gib=args.memory_gib, precision=args.precision,
    )  # fmt: skip


def write_case(card, case, files, out, computed, args, request, receptive_field_min) -> list[Path]:
    """Write one case's files (see the module docstring); its JSON records the run's ``request``."""
    from napari_autofocus.inference.predictor import provenance
    from napari_autofocus.io.prediction_files import write_prediction

    prediction, report, geometry = computed
    info = {
        "case": case,
        "inputs": [f.name for f in files],
        "model": str(args.model),
        "request": request,
        **provenance(prediction, report.to_dict(), card),
        "network_input_size": list(prediction.tile_size),
        "tiles_run": prediction.tiles_run,
        "peak_memory_gib": round(prediction.peak_memory_gib, 3),
        "torch_version": __import__("torch").__version__,
    }
    written = write_prediction(
        out, case, prediction, geometry, info, receptive_field_min=receptive_field_min,
        network_spacing=report.network_spacing, overwrite=args.force or args.resume,
    )  # fmt: skip
    steps = ", ".join(report.steps())
    print(
        f"  {case}: {describe_run(prediction)} ({steps}) in {prediction.seconds:.1f} s on "
        f"{prediction.device}, peak memory {prediction.peak_memory_gib:.2f} GiB -> {len(written)} files",
        flush=True,
    )
    return written


def describe_run(prediction) -> str:
    """'whole volume, cropped to 140x174x139' or '18 tiles'; says when the ROI was empty."""
    box = prediction.crop_box
    if box is None:
        return "empty region of interest, nothing computed"
    extent = "x".join(str(b - a) for a, b in box)
    cropped = tuple(b - a for a, b in box) != prediction.labels.shape
    where = f"cropped to the foreground box {extent}" if cropped else f"{extent}"
    if prediction.mode == "whole":
        return f"whole volume {where}"
    return f"{prediction.tiles_run} {prediction.mode} tiles over {where}"
