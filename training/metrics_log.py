"""Rank-0 metrics: TensorBoard (default), Weights & Biases (only when asked; imported lazily), console lines and an
optional tqdm progress bar. Every other rank gets a logger that does nothing."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, out_dir: Path, *, enabled: bool, tensorboard: bool, wandb: bool, wandb_project: str,
                 progress: str, total_steps: int, start_step: int, config: dict):
        self.enabled = enabled
        self.writer = None
        self._wandb = None
        self._bar = None
        if not enabled:
            return
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
        if wandb:
            try:
                import wandb as wandb_mod
            except ImportError as e:
                raise ImportError("log.wandb = true needs the wandb package: pip install wandb") from e
            self._wandb = wandb_mod
            wandb_mod.init(project=wandb_project, dir=str(out_dir), config=config, resume="allow")
        use_tqdm = progress == "tqdm" or (progress == "auto" and sys.stderr.isatty())
        if use_tqdm:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc="train")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)
        # The console line leaves out skip counters that are still zero (TensorBoard and metrics.jsonl keep them).
        text = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if not (k.startswith("data/") and v == 0))
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss={_fmt(metrics.get('loss/total', float('nan')))}")
            self._bar.write(f"step {step} {text}")
        else:
            log.info("step %d %s", step, text)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def images(self, tag: str, images: torch.Tensor, step: int) -> None:
        """images: (N,3,H,W) float in [0,1]."""
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.add_images(tag, images, step)
        if self._wandb is not None:
            self._wandb.log({tag: [self._wandb.Image(img.permute(1, 2, 0).numpy()) for img in images]}, step=step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self.writer is not None:
            self.writer.close()
        if self._wandb is not None:
            self._wandb.finish()


def _fmt(v: float) -> str:
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4f}"
    return f"{v:.3e}"


def memory_metrics(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"mem/allocated_gb": torch.cuda.memory_allocated(device) / 2**30,
                "mem/max_allocated_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    try:
        import resource

        # ru_maxrss is KiB on Linux.
        return {"mem/host_max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    except ImportError:
        return {}
