"""The console side of `training`'s command lines: log lines without per-load progress bars, and progress of long
loops (tqdm on a terminal, log lines elsewhere)."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, fmt: str = LOG_FORMAT) -> None:
    """`logging.basicConfig` plus :func:`quiet_weight_loading`."""
    logging.basicConfig(level=level, format=fmt)
    quiet_weight_loading()


def quiet_weight_loading() -> None:
    """No transformers / huggingface_hub progress bar per weight load or save ("Loading weights: 100%|...| 38/38").

    The demo, the toy world and the evaluation load and save small models dozens of times, and each bar says nothing
    the log lines do not. The switch is huggingface_hub's HF_HUB_DISABLE_PROGRESS_BARS (a user who sets it keeps their
    value); transformers reads it when first imported, so an already imported transformers is told directly. Our own
    progress (tqdm over images, samples, shards) is unaffected."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] != "1":
        return
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", every_s: float = 30.0) -> Iterator[T]:
    """`iterable`, showing progress: a tqdm bar on a terminal; elsewhere (a log file, CI, tests) an INFO line
    "desc: done/total" at most every `every_s` seconds and at the end. The same rule as the trainer's
    `train.progress = auto` (training/metrics_log.py)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(iterable, total=total, desc=desc, dynamic_ncols=True)
        return
    log = logging.getLogger(__name__)
    last, done = time.monotonic(), 0
    for item in iterable:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s or done == total:
            log.info("%s: %d/%s", desc, done, "?" if total is None else total)
            last = now
