"""What every command-line entry point of `training` sets up first: log lines, and no per-load progress bars."""

from __future__ import annotations

import logging
import os
import sys

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
