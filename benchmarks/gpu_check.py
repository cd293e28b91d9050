"""A few-minute CUDA check of the training and inference paths, with numbers worth reporting.

    python benchmarks/gpu_check.py [--json] [--steps 10] [--arch AFN6] [--no-ddp]

1. AFN6 training steps on 75^3 patches, batch 10, with AMP (bf16 if supported, else fp16 +
   GradScaler) and channels_last_3d: steps/s and peak GPU memory;
2. the same in the reference formulation (fp32, default NCDHW layout) as the baseline;
3. DDP over all visible GPUs (``torch.multiprocessing.spawn``, NCCL, SyncBatchNorm), same steps;
4. AFN6 whole-volume inference on the brain-masked 4x240x240x155 volume of
   ``benchmarks/inference.py``: one pass and streaming, fp32 and bf16, time, peak GPU memory and
   bf16's label agreement with fp32 on the brain.
Without CUDA it says so and exits 0 (``--json`` prints ``{"cuda": false}``). Weights are random:
this measures speed and memory, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _steps(
    model, device, steps: int, batch: int, patch: int, amp: bool, channels_last: bool, rank_batch=None
):
    """Time ``steps`` RMSprop/CE training steps after 2 warm-up steps; returns (seconds/step, peak GiB)."""
    batch = rank_batch or batch
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt).train()
    opt = torch.optim.RMSprop(
        model.parameters(), lr=1e-3, alpha=0.9, eps=1e-4, momentum=0.6, weight_decay=1e-4
    )
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    net = model.module if hasattr(model, "module") else model
    out = net.output_size(patch)
    x = torch.randn(batch, net.in_channels, patch, patch, patch, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, net.num_classes, (batch, out, out, out), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=amp):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(2):
        step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    return seconds, torch.cuda.max_memory_allocated(device) / 2**30


def train_check(arch: str, steps: int, batch: int, patch: int, amp: bool, channels_last: bool) -> dict:
    from napari_autofocus.nets import build_network

    torch.backends.cudnn.benchmark = True
    model = build_network(arch, 4, 5)
    sec, peak = _steps(model, torch.device("cuda", 0), steps, batch, patch, amp, channels_last)
    return {
        "amp": amp,
        "channels_last": channels_last,
        "s_per_step": round(sec, 4),
        "steps_per_s": round(1 / sec, 3),
        "patches_per_s": round(batch / sec, 2),
        "peak_gib": round(peak, 2),
    }


def _ddp_worker(rank: int, world: int, arch: str, steps: int, batch: int, patch: int, result: str) -> None:
    import torch.distributed as dist

    from napari_autofocus.nets import build_network

    dist.init_process_group("nccl", rank=rank, world_size=world)
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    torch.backends.cudnn.benchmark = True
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_network(arch, 4, 5)).to(device)
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    rank_batch = max(1, batch // world)
    sec, peak = _steps(model, device, steps, batch, patch, True, True, rank_batch=rank_batch)
    if rank == 0:
        Path(result).write_text(json.dumps({"world_size": world, "per_gpu_batch": rank_batch,
            "s_per_step": round(sec, 4), "patches_per_s": round(rank_batch * world / sec, 2),
            "peak_gib_rank0": round(peak, 2)}))  # fmt: skip
    dist.destroy_process_group()


def ddp_check(arch: str, steps: int, batch: int, patch: int) -> dict:
    import torch.multiprocessing as mp

    world = torch.cuda.device_count()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    with tempfile.TemporaryDirectory() as tmp:
        result = str(Path(tmp) / "ddp.json")
        mp.spawn(_ddp_worker, args=(world, arch, steps, batch, patch, result), nprocs=world, join=True)
        return json.loads(Path(result).read_text())


def inference_check(arch: str) -> dict:
    """Whole-volume inference on the brain-masked BraTS-size volume of ``benchmarks/inference.py``:
    one pass and per-layer streaming, each in fp32 and bf16, with bf16's label agreement on the
    brain."""
    from benchmarks.inference import SIZES, build_model, make_volume
    from napari_autofocus.inference import predict_volume

    model = build_model(arch)
    image = make_volume(*SIZES["brats"], model.in_channels)
    brain = (image != 0).any(0)
    runs, labels = {}, {}
    for one_pass in (True, False):
        for precision in ("fp32", "bf16"):
            name = f"{'one pass' if one_pass else 'streaming'}, {precision}"
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            pred = predict_volume(
                model, image, device="cuda", attention=True, one_pass=one_pass, precision=precision
            )
            torch.cuda.synchronize()
            labels[name] = pred.labels
            runs[name] = {
                "seconds": round(time.perf_counter() - start, 2),
                "mode": pred.mode,
                "slabs": pred.slabs_run,
                "input_size": list(pred.tile_size),
                "peak_gib": round(pred.peak_memory_gib, 2),
            }
    for name in runs:
        reference = labels[name.replace("bf16", "fp32")]
        runs[name]["labels_agree_with_fp32"] = round(
            float((labels[name][brain] == reference[brain]).mean()), 5
        )
    return {"shape": list(image.shape), "arch": arch, "device": torch.cuda.get_device_name(0), "runs": runs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--arch", default="AFN6")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per configuration")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--patch", type=int, default=75)
    parser.add_argument("--no-ddp", action="store_true", help="skip the DDP run")
    parser.add_argument("--no-inference", action="store_true", help="skip the whole-volume inference")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(json.dumps({"cuda": False}) if args.json else "no CUDA device: nothing to check (exit 0)")
        return 0
    report = {"cuda": True, "device": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(),
              "torch": torch.__version__, "arch": args.arch, "patch": args.patch, "batch": args.batch,
              "bf16": torch.cuda.is_bf16_supported()}  # fmt: skip
    checks = [
        (
            "train_amp_channels_last",
            lambda: train_check(args.arch, args.steps, args.batch, args.patch, True, True),
        ),
        (
            "train_fp32_reference",
            lambda: train_check(args.arch, args.steps, args.batch, args.patch, False, False),
        ),
    ]
    if not args.no_ddp:
        checks.append(("ddp", lambda: ddp_check(args.arch, args.steps, args.batch, args.patch)))
    if not args.no_inference:
        checks.append(("inference", lambda: inference_check(args.arch)))
    for name, check in checks:
        try:
            report[name] = check()
        except Exception as exc:  # report and go on: one failing path should not hide the others
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        torch.cuda.empty_cache()
        # each result as soon as it is known (to stderr under --json), so a run cut short still reports
        print(f"{name}: {json.dumps(report[name])}", file=sys.stderr if args.json else sys.stdout, flush=True)
    a, b = report.get("train_amp_channels_last", {}), report.get("train_fp32_reference", {})
    if "s_per_step" in a and "s_per_step" in b:
        report["speedup_amp_channels_last"] = round(b["s_per_step"] / a["s_per_step"], 2)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"speedup AMP+channels_last vs fp32 NCDHW: {report.get('speedup_amp_channels_last')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
