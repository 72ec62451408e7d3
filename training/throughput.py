"""Throughput benchmark: a few optimiser steps of a stage at a given config -> samples/s per device and model FLOPs
utilisation (MFU), to size a GPU run before renting it.

    python -m training.throughput --config training/configs/stage3.toml --steps 10 --synthetic
    torchrun --standalone --nproc_per_node 8 -m training.throughput --config training/configs/stage3.toml \
        --steps 20 --peak-tflops 989 data.batch_size=16 parallel.strategy=fsdp

How FLOPs are counted: `torch.utils.flop_counter.FlopCounterMode` over one full optimiser step (all micro-batches,
forward and backward), with activation checkpointing switched off for that one step so recomputation is not counted
(`--count-with-recompute` keeps it on, then the figure is hardware FLOPs and the ratio is HFU). It counts matmuls,
convolutions and attention as they actually run on this device: trainable parts forward + backward (input and
weight gradients), frozen parts forward, plus backward-for-input only where the gradient passes through them (the
SD1.5 U-Net in stage 3); frozen parts under no_grad (stage-2 MLLM and CLIP, the VAE encoder) forward only.
Elementwise ops, norms and the optimiser are not counted. MFU = counted FLOPs per step / measured step time / peak.

The peak comes from `--peak-tflops` or, on CUDA, from a small table of dense bf16/fp16 tensor-core peaks keyed by
the device name. `--synthetic` replaces the config's data by tiny synthetic shards (no data set needed; the loader
resizes them to the configured sizes, so compute matches real data of the same token lengths). `--cache` builds the
frozen-output cache of the shards first (`python -m training.build_cache`) and runs with `[sd15] cache_outputs =
true`: the same command with and without it measures what the cache saves (stages 2 and 3).

`--plan` needs no GPU and runs nothing for real: it prints the memory of weights, gradients, optimizer states and
activations per GPU of the config's stage at its real size, which settings fit `--gpu-memory` GiB on `--gpus` GPUs,
and the samples/s expected from the step's FLOPs at an assumed utilisation of the `--gpu` peak
(training/memory_plan.py says how each number is made):

    python -m training.throughput --config training/configs/stage3.toml --plan --gpu-memory 24 --gpu "RTX 4090"
    python -m training.throughput --config training/configs/stage3.toml --plan --gpu-memory 80 --gpus 8 --gpu A100
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from training.cli import setup_logging

from . import distributed
from .train import Trainer
from .train_config import TrainConfig, load_config

log = logging.getLogger(__name__)

# Dense tensor-core peak TFLOP/s for bf16/fp16 (vendor datasheets, no sparsity). First matching substring wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
    ("L40", 181.0), ("L4", 121.0), ("A6000", 155.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0),
    ("V100", 125.0), ("T4", 65.0),
)

SYNTHETIC_SOURCES = {
    "stage1": (("text", 1.0), ("captions", 1.0), ("interleaved", 1.0)),
    "stage2": (("captions", 1.0),),
    "stage3": (("compositional", 2.0), ("editing", 2.0), ("captions", 1.0)),
}


def peak_for_name(name: str, precision: str) -> tuple[float | None, str]:
    """The PEAK_TFLOPS entry whose key is in `name` (a CUDA device name, or --gpu)."""
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"table entry {key!r} (dense {precision})"
    return None, f"{name} not in the table (pass --peak-tflops)"


def peak_tflops(device: torch.device, precision: str, given: float | None) -> tuple[float | None, str]:
    if given:
        return given, "--peak-tflops"
    if device.type != "cuda" or precision == "fp32":
        return None, "unknown (pass --peak-tflops)"
    return peak_for_name(torch.cuda.get_device_name(device), precision)


def with_synthetic_data(cfg: TrainConfig, folder: Path) -> TrainConfig:
    from training.data.synthetic import write_synthetic_shards

    if cfg.stage not in SYNTHETIC_SOURCES:
        raise ValueError(f"--synthetic knows stages {sorted(SYNTHETIC_SOURCES)}, not {cfg.stage!r}")
    sources = []
    for kind, weight in SYNTHETIC_SOURCES[cfg.stage]:
        write_synthetic_shards(folder / kind, kind, 32, samples_per_shard=8)
        sources.append({"kind": kind, "shards": str(folder / kind), "weight": weight})
    return replace(cfg, data={**cfg.data, "sources": sources})


def _set_recompute(trainer: Trainer, enabled: bool) -> None:
    cfg = trainer.cfg
    trainer.stage.set_activation_checkpointing(trainer.model, cfg, enabled and cfg.model.activation_checkpointing)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(cfg: TrainConfig, steps: int, warmup: int, peak: float | None, count_with_recompute: bool,
              count_flops: bool = True) -> dict:
    trainer = Trainer(cfg)
    info = trainer.info
    for _ in range(warmup):
        trainer.step()
    flops = None
    if count_flops:
        try:
            from torch.utils.flop_counter import FlopCounterMode

            if not count_with_recompute:
                _set_recompute(trainer, False)
            with FlopCounterMode(display=False) as counter:
                trainer.step()
            flops = float(counter.get_total_flops())
        except (RuntimeError, NotImplementedError, TypeError) as e:
            log.warning("FLOP counting failed (%s); MFU will not be reported", e)
        finally:
            _set_recompute(trainer, True)
    _sync(info.device)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    samples = tokens = 0
    step_times, cpu_times = [], []  # per step: wall clock, and this process's CPU time (all its threads)
    t0 = time.perf_counter()
    for _ in range(steps):
        t_step, c_step = time.perf_counter(), time.process_time()
        _, _, n, t = trainer.step()
        _sync(info.device)
        step_times.append(time.perf_counter() - t_step)
        cpu_times.append(time.process_time() - c_step)
        samples, tokens = samples + n, tokens + t
    elapsed = time.perf_counter() - t0
    stats = distributed.all_reduce_mean({"elapsed": elapsed, "samples": samples, "tokens": tokens}, info.device)
    step_time = stats["elapsed"] / steps
    peak_value, peak_source = peak_tflops(info.device, cfg.parallel.precision, peak)
    result = {
        "stage": cfg.stage, "devices": info.world_size, "device": _device_name(info.device),
        "strategy": cfg.parallel.strategy, "precision": cfg.parallel.precision,
        "micro_batch": cfg.data.get("batch_size"), "grad_accum": cfg.run.grad_accum, "steps": steps,
        "step_time_s": step_time, "step_times_s": step_times, "step_cpu_times_s": cpu_times, "frozen_cache": cfg.sd15.cache_outputs,
        "threads": torch.get_num_threads(), "samples_per_s_per_device": stats["samples"] / stats["elapsed"],
        "tokens_per_s_per_device": stats["tokens"] / stats["elapsed"],
        "flops_per_step_per_device": flops, "peak_tflops": peak_value, "peak_source": peak_source,
        "max_memory_gb": torch.cuda.max_memory_allocated(info.device) / 2**30 if info.device.type == "cuda" else None,
    }
    if flops is not None:
        result["achieved_tflops_per_device"] = flops / step_time / 1e12
        if peak_value:
            result["mfu"] = result["achieved_tflops_per_device"] / peak_value
    return result


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def format_report(r: dict) -> str:
    rows = [
        ("stage", r["stage"]),
        ("devices", f"{r['devices']} x {r['device']} ({r['strategy']}, {r['precision']})"),
        ("micro-batch x accum", f"{r['micro_batch']} x {r['grad_accum']}"),
        ("step time", f"{r['step_time_s']:.3f} s (mean of {r['steps']})"),
        ("frozen-output cache", "on" if r.get("frozen_cache") else "off"),
        ("samples/s per device", f"{r['samples_per_s_per_device']:.3f}"),
        ("tokens/s per device", f"{r['tokens_per_s_per_device']:.1f}"),
    ]
    if r.get("flops_per_step_per_device") is not None:
        rows.append(("model FLOPs/step/device", f"{r['flops_per_step_per_device'] / 1e12:.4f} TFLOP"))
        rows.append(("achieved", f"{r['achieved_tflops_per_device']:.4f} TFLOP/s per device"))
    rows.append(("peak", f"{r['peak_tflops']} TFLOP/s, {r['peak_source']}" if r["peak_tflops"] else r["peak_source"]))
    rows.append(("MFU", f"{100 * r['mfu']:.2f} %" if "mfu" in r else "n/a"))
    if r.get("max_memory_gb") is not None:
        rows.append(("max memory", f"{r['max_memory_gb']:.2f} GiB"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows) + "\n"


def run_plan(args) -> object:
    """--plan: the memory plan of the config at its real size (training/memory_plan.py), printed."""
    from training.memory_plan import SampleShape, default_sample_shape, format_plan, make_plan

    if not args.gpu_memory:
        raise SystemExit("--plan needs --gpu-memory GIB (memory of one GPU, e.g. 24 or 80)")
    cfg = load_config(args.config, args.overrides)
    peak, source = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else \
        peak_for_name(args.gpu, cfg.parallel.precision) if args.gpu else (None, "")
    shape = default_sample_shape(cfg)
    if args.plan_text_tokens is not None or args.plan_images is not None:
        shape = SampleShape(text_tokens=shape.text_tokens if args.plan_text_tokens is None else args.plan_text_tokens,
                            images=shape.images if args.plan_images is None else args.plan_images)
    batches = [int(b) for b in args.micro_batches.split(",")] if args.micro_batches else None
    plan = make_plan(cfg, gpu_memory_gib=args.gpu_memory, gpus=args.gpus, shape=shape, batches=batches,
                     reserve_gib=args.reserve_gib, fragmentation=args.fragmentation, peak_tflops=peak,
                     peak_source=source, utilisation=args.utilisation)
    sys.stdout.write(format_plan(plan))
    return plan


def main(argv: list[str] | None = None) -> dict | object:
    parser = argparse.ArgumentParser(prog="python -m training.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="stage TOML to measure, e.g. training/configs/stage3.toml")
    parser.add_argument("--steps", type=int, default=10, help="timed optimiser steps (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, kernels, loader; default 2)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s of one device for MFU")
    parser.add_argument("--synthetic", action="store_true", help="tiny synthetic shards instead of [data] sources")
    parser.add_argument("--count-with-recompute", action="store_true",
                        help="count FLOPs with activation checkpointing on (hardware FLOPs; use if the count OOMs)")
    parser.add_argument("--no-flops", action="store_true",
                        help="skip the FLOP-counting step (it is one more full step; no MFU is reported)")
    parser.add_argument("--cache", action="store_true",
                        help="build the frozen-output cache of the shards first (python -m training.build_cache: "
                             "files beside the shards) and run with [sd15] cache_outputs = true (stages 2 and 3)")
    parser.add_argument("--json", default="", help="also write the result to this JSON file")
    plan = parser.add_argument_group("--plan (memory plan without a GPU; training/memory_plan.py)")
    plan.add_argument("--plan", action="store_true", help="print the memory plan instead of running steps")
    plan.add_argument("--gpu-memory", type=float, default=0.0, help="memory of one GPU in GiB (24, 40, 80...)")
    plan.add_argument("--gpus", type=int, default=1, help="GPUs (data parallel; FSDP shards over them; default 1)")
    plan.add_argument("--gpu", default="", help="GPU name for the peak TFLOP/s table, e.g. 'RTX 4090', A100, H100")
    plan.add_argument("--utilisation", type=float, default=0.40,
                      help="assumed share of the dense bf16 peak the step's FLOPs reach (default 0.40)")
    plan.add_argument("--reserve-gib", type=float, default=1.0,
                      help="per-GPU memory kept for the CUDA context and workspaces (default 1 GiB)")
    plan.add_argument("--fragmentation", type=float, default=0.10,
                      help="share of the rest lost to allocator fragmentation (default 0.10)")
    plan.add_argument("--micro-batches", default="", help="micro-batch sizes to simulate, e.g. 16,8,4 "
                      "(default: the configured per-GPU batch halved down to 1)")
    plan.add_argument("--plan-text-tokens", type=int, default=None,
                      help="text tokens per sample (default: stage 2 85, stage 3 64)")
    plan.add_argument("--plan-images", type=int, default=None, help="input images per sample (default: stage 3 2)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value config overrides")
    args = parser.parse_args(argv)
    # Rank 0 logs progress; other ranks only warnings and errors.
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    setup_logging(level)
    if args.plan:
        return run_plan(args)
    with tempfile.TemporaryDirectory(prefix="kosmos_g_bench_") as tmp:
        forced = [f'run.out_dir="{tmp}/run"', f"run.max_steps={args.warmup + args.steps + 1}", "checkpoint.every=0",
                  'checkpoint.resume=""', "sample.every=0", "log.tensorboard=false", "log.wandb=false"]
        cfg = load_config(args.config, [*args.overrides, *forced])
        if args.synthetic:
            cfg = with_synthetic_data(cfg, Path(tmp) / "shards")
        try:
            if args.cache:
                from .build_cache import build_cache

                build_cache(cfg)  # every rank has written its share when it returns (a collective ends it)
                cfg = replace(cfg, sd15=replace(cfg.sd15, cache_outputs=True))
            result = benchmark(cfg, args.steps, args.warmup, args.peak_tflops, args.count_with_recompute,
                               count_flops=not args.no_flops)
        except BaseException:
            distributed.abort()
            raise
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            sys.stdout.write(format_report(result))
            if args.json:
                Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        distributed.teardown()
    return result


if __name__ == "__main__":
    main()
