r"""KOSMOS-G trainer: one entry point for every stage, on one CPU, one GPU or many nodes.

    # 1 process (CPU or one GPU); plain python works too
    torchrun --standalone --nproc_per_node 1 -m training.train --config training/configs/stage2.toml
    # 8 GPUs on one machine
    torchrun --standalone --nproc_per_node 8 -m training.train --config training/configs/stage3.toml
    # 4 nodes x 8 GPUs (run on every node; NODE_RANK = 0..3, MASTER = the first node's address)
    torchrun --nnodes 4 --nproc_per_node 8 --node_rank $NODE_RANK --rdzv_backend c10d \
        --rdzv_endpoint $MASTER:29500 -m training.train --config training/configs/stage3.toml
    # dotted overrides after the config; resume after a crash
    torchrun --standalone --nproc_per_node 8 -m training.train --config training/configs/stage1.toml \
        optim.lr=2e-4 data.batch_size=8 parallel.strategy=fsdp checkpoint.resume=latest

Stages: stage1 (multimodal LM), stage2 (AlignerNet M + N), stage3 (instruction tuning through the frozen SD1.5
U-Net), layout (text-to-layout model, when its module is present). gloo on CPU, nccl on CUDA. The run folder
(`run.out_dir`) receives config.resolved.json, checkpoints/, tensorboard/, metrics.jsonl, samples/ and the export.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.distributed.tensor import DTensor

if TYPE_CHECKING:
    from .stages import Stage

from kosmos_g_core.dtypes import dtype_from_name

from . import distributed
from .checkpoint import CheckpointManager
from .cli import setup_logging
from .data.stats import SKIP_REASONS
from .distributed import DistInfo, all_reduce_mean, all_reduce_sum, unwrap
from .metrics_log import MetricsLogger, memory_metrics
from .optim import build_optimizer, build_scheduler
from .train_config import TrainConfig, load_config, save_resolved

log = logging.getLogger(__name__)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """`[parallel] precision` -> the autocast dtype (None for fp32: no autocast)."""
    dtype = dtype_from_name(precision, "parallel.precision")
    return None if dtype == torch.float32 else dtype



@dataclass
class RunResult:
    """What a finished run reports (tests and the throughput benchmark read it)."""
    start_step: int
    final_step: int
    losses: list[float] = field(default_factory=list)  # this rank's loss of every optimiser step run here
    step_times: list[float] = field(default_factory=list)
    samples: int = 0          # samples seen by this rank
    tokens: int = 0
    export_path: str = ""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_stage(name: str) -> Stage:
    from .stages import STAGES  # the stages import diffusers & co.: not needed for --help

    if name not in STAGES:
        raise ValueError(f"stage = {name!r}: unknown; registered stages are {sorted(STAGES)}")
    return STAGES[name]()


def _wrap(stage: Stage, model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    strategy = cfg.parallel.strategy
    if strategy == "fsdp":
        mp = torch.bfloat16 if cfg.parallel.precision == "bf16" else None
        return distributed.wrap_fsdp(model, stage.shard_units(model), stage.fsdp_forward_methods, mixed_precision=mp)
    if strategy == "ddp":
        return distributed.wrap_ddp(model, info, stage.find_unused_parameters)
    raise ValueError(f"parallel.strategy = {strategy!r}: expected 'ddp' or 'fsdp'")


def _grad_norm(params: list[nn.Parameter], clip: float) -> float:
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if isinstance(norm, DTensor):  # FSDP2
        norm = norm.full_tensor()
    return float(norm)


def replica_checksums(model: nn.Module) -> list[float]:
    """Per trainable tensor, sum and sum of squares in float64: identical on every DDP replica when in sync."""
    out = []
    for _name, p in sorted(unwrap(model).named_parameters(), key=lambda kv: kv[0]):
        if p.requires_grad:
            t = p.detach()
            t = t.full_tensor() if isinstance(t, DTensor) else t
            t = t.double()
            out += [float(t.sum()), float((t * t).sum())]
    return out


def _check_replicas(model: nn.Module, out_dir: Path, info: DistInfo) -> bool:
    sums = replica_checksums(model)
    gathered = distributed.all_gather_object(sums)
    in_sync = all(g == gathered[0] for g in gathered)
    if info.is_main:
        (out_dir / "replica_checksums.json").write_text(json.dumps({"in_sync": in_sync, "ranks": gathered}))
        (log.info if in_sync else log.error)("replica check: parameters %s across %d ranks",
                                             "identical" if in_sync else "DIFFER", len(gathered))
    return in_sync


class Trainer:
    """One training run: builds everything in __init__, `step()` runs one optimiser step, `run()` the loop."""

    def __init__(self, cfg: TrainConfig):
        self.amp_dtype = autocast_dtype(cfg.parallel.precision)
        self.cfg = cfg
        self.stage = build_stage(cfg.stage)
        self.stage.check_config(cfg)  # the stage's own tables, before anything is built
        if cfg.sd15.cache_outputs and not self.stage.caches_frozen_outputs:
            raise ValueError(f"[sd15] cache_outputs = true, but stage {cfg.stage!r} has no frozen outputs to cache "
                             "(stage2: CLIP text targets, stage3: VAE posteriors); set it to false")
        self.info = info = distributed.setup(cfg.run.device)
        self.out_dir = Path(cfg.run.out_dir)
        if info.is_main:
            save_resolved(cfg, self.out_dir)
        seed_everything(cfg.run.seed)  # identical on every rank: the model starts identical everywhere
        model = self.stage.build_model(cfg, info.device)
        if cfg.model.activation_checkpointing:
            self.stage.set_activation_checkpointing(model, cfg, True)
        # FSDP2 replaces parameters by sharded ones, so the optimiser is built on the wrapped model's parameters.
        self.model = _wrap(self.stage, model, cfg, info)
        self.params = [p for p in self.stage.trainable_parameters(self.model) if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.run.max_steps)
        self.scaler = torch.amp.GradScaler(info.device.type) if cfg.parallel.precision == "fp16" else None
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", cfg.checkpoint.keep, info.rank, info.world_size)
        self.loader = self.stage.build_dataloader(cfg, self.model, info.rank, info.world_size)
        self.step_count = 0
        self.resumed_from = self.ckpt.resolve(cfg.checkpoint.resume)
        if self.resumed_from is not None:
            state = self.ckpt.load(self.resumed_from, self.model, self.optimizer, self.scheduler, self.scaler)
            self.step_count = state["step"]
            if state["loader"] is not None:
                self.loader.load_state_dict(state["loader"])
        elif cfg.checkpoint.resume == "latest":
            log.info("checkpoint.resume = latest: no checkpoint in %s yet, starting fresh", self.ckpt.root)
        if self.resumed_from is None or not state["rng_restored"]:
            # Per-rank streams (noise, timesteps, dropout, CFG drops) differ across ranks, reproducibly.
            seed_everything(cfg.run.seed + 1 + info.rank)
        log.info("seeds: model init %d, rank streams %d + 1 + rank (restored from the checkpoint on resume)",
                 cfg.run.seed, cfg.run.seed)
        n_trainable = sum(p.numel() for p in self.params)
        log.info("stage %s: %d ranks, %s, %s, %.1fM trainable elements on this rank, steps %d -> %d", cfg.stage,
                 info.world_size, cfg.parallel.strategy, cfg.parallel.precision, n_trainable / 1e6,
                 self.step_count, cfg.run.max_steps)
        self._batches: Iterator[dict] | None = None

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.amp_dtype)

    def step(self) -> tuple[float, dict[str, float], int, int]:
        """One optimiser step over `grad_accum` micro-batches -> (loss, metrics, samples, tokens) of this rank."""
        cfg = self.cfg
        if self._batches is None:
            self._batches = iter(self.loader)
        step_loss = 0.0
        metrics_sum: dict[str, float] = {}
        samples = tokens = 0
        for micro in range(cfg.run.grad_accum):
            batch = next(self._batches)
            n, t = self.stage.count(batch)
            samples, tokens = samples + n, tokens + t
            with distributed.no_sync(self.model, micro < cfg.run.grad_accum - 1)():
                with self.autocast():
                    loss, metrics = self.stage.loss(self.model, batch, self.step_count)
                scaled = loss / cfg.run.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            step_loss += float(loss.detach()) / cfg.run.grad_accum
            for k, v in metrics.items():
                metrics_sum[k] = metrics_sum.get(k, 0.0) + v / cfg.run.grad_accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        metrics_sum["grad_norm"] = _grad_norm(self.params, cfg.optim.clip_norm)
        metrics_sum["lr"] = self.scheduler.get_last_lr()[0]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_count += 1
        metrics_sum["loss/total"] = step_loss
        return step_loss, metrics_sum, samples, tokens

    def save(self) -> None:
        self.ckpt.save(self.step_count, self.model, self.optimizer, self.scheduler, self.scaler, self.loader.state_dict(),
                       {"stage": self.cfg.stage})

    def run(self) -> RunResult:
        """Train to `run.max_steps` (or `run.stop_after` more steps), checkpoint, export at the end."""
        cfg, info = self.cfg, self.info
        result = RunResult(start_step=self.step_count, final_step=self.step_count)
        end = cfg.run.max_steps
        if cfg.run.stop_after:
            end = min(end, self.step_count + cfg.run.stop_after)
        logger = MetricsLogger(self.out_dir, enabled=info.is_main, tensorboard=cfg.log.tensorboard,
                               wandb=cfg.log.wandb, wandb_project=cfg.log.wandb_project, progress=cfg.log.progress,
                               total_steps=cfg.run.max_steps, start_step=self.step_count, config=cfg.to_dict())
        metrics_file = self.out_dir / "metrics.jsonl"
        window: dict[str, float] = {}
        window_steps = window_samples = window_tokens = 0
        window_start = time.perf_counter()
        last_saved = self.step_count if self.resumed_from is not None else -1
        try:
            while self.step_count < end:
                t0 = time.perf_counter()
                loss, metrics, samples, tokens = self.step()
                step = self.step_count
                result.final_step = step
                result.losses.append(loss)
                result.step_times.append(time.perf_counter() - t0)
                result.samples += samples
                result.tokens += tokens
                if not math.isfinite(loss):
                    log.warning("step %d: non-finite loss %s", step, loss)
                for k, v in metrics.items():
                    window[k] = window.get(k, 0.0) + v
                window_steps += 1
                window_samples += samples
                window_tokens += tokens
                logger.advance()
                if step % cfg.log.every == 0 or step == end:
                    lr = window.pop("lr") / window_steps
                    means = all_reduce_mean({k: v / window_steps for k, v in window.items()}, info.device)
                    dt = max(time.perf_counter() - window_start, 1e-9)
                    rates = all_reduce_mean({"s": window_samples / dt, "t": window_tokens / dt}, info.device)
                    means.update({"lr": lr, "throughput/samples_per_s": rates["s"] * info.world_size,
                                  "throughput/tokens_per_s": rates["t"] * info.world_size,
                                  "throughput/samples_per_s_per_device": rates["s"]})
                    means.update(memory_metrics(info.device))
                    # Counts, not rates: summed over ranks (every rank reports every reason, zeros included).
                    counts = {f"data/{r}": float(self.loader.stats.get(r, 0)) for r in SKIP_REASONS}
                    means.update(all_reduce_sum(counts, info.device))
                    logger.log(step, means)
                    if info.is_main:
                        with open(metrics_file, "a") as f:
                            f.write(json.dumps({"step": step, **means}) + "\n")
                    window, window_steps, window_samples, window_tokens = {}, 0, 0, 0
                    window_start = time.perf_counter()
                if cfg.sample.every and step % cfg.sample.every == 0:
                    self.stage.sample(self.model, step, logger, cfg)
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0:
                    self.save()
                    last_saved = step
            if last_saved != self.step_count:
                self.save()
            if self.step_count >= cfg.run.max_steps:
                export_path = cfg.checkpoint.export_path or str(self.out_dir / "export.safetensors")
                self.stage.export(self.model, export_path, cfg)
                result.export_path = export_path
            else:
                log.info("stopped at step %d of %d (run.stop_after); resume with checkpoint.resume=latest",
                         self.step_count, cfg.run.max_steps)
            if cfg.parallel.check_replicas:
                _check_replicas(self.model, self.out_dir, info)
        finally:
            logger.close()
        return result


def run(cfg: TrainConfig) -> RunResult:
    """Train `cfg.stage` as configured (resuming when asked), then export; leaves the process group."""
    try:
        result = Trainer(cfg).run()
    except BaseException:
        distributed.abort()  # no barrier: other ranks may be stuck in a collective
        raise
    distributed.teardown()
    return result


def _shipped_configs() -> str:
    """The --help list of training/configs/**/*.toml, each with the first line of its leading comment."""
    root = Path(__file__).resolve().parent
    lines = ["shipped configs (docs/training.md has every key):"]
    for path in sorted((root / "configs").rglob("*.toml")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        lines.append(f"  {path.relative_to(root.parent)}  {first.lstrip('# ').rstrip(':') if first.startswith('#') else ''}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_shipped_configs() + "\n\noverrides: dotted.key=value pairs after the options, e.g. optim.lr=1e-4 "
                                     "data.batch_size=8")
    parser.add_argument("--config", required=True, help="stage TOML, e.g. training/configs/stage2.toml (list below)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the config")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)  # --help and usage errors end here, as for any command
    # Rank 0 logs progress; other ranks only warnings and errors.
    setup_logging(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    _load_and_run(args.config, args.overrides)


@record  # under torchrun, the failing rank's error (message last) replaces torchrun's "To enable traceback see..."
def _load_and_run(config: str, overrides: list[str]) -> None:
    run(load_config(config, overrides))


if __name__ == "__main__":
    main()
