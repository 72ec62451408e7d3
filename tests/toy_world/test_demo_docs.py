"""The demo says what it does and how long it takes, the same in its --help, the README and docs/evaluation.md, and
logs the thread count it runs with."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from training import demo
from training.toy_world.run import choose_threads

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_time_is_the_same_everywhere():
    minutes = re.search(r"([0-9.]+) minutes measured on an idle 2-core CPU", demo.__doc__).group(1)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    docs = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
    assert f"It takes {minutes} minutes on an idle\n2-core CPU" in readme
    assert f"**{minutes} minutes**" in docs
    for text in (demo.__doc__, readme, docs):
        assert "--threads N" in text and "one thread" in text.replace("1 thread", "one thread")


def test_the_thread_choice_is_logged(caplog):
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="training.toy_world.run"):
            assert choose_threads(3) == 3 and torch.get_num_threads() == 3
            automatic = choose_threads(0)
        assert "using 3 torch CPU threads (--threads)" in caplog.text
        assert re.search(rf"using {automatic} torch CPU threads? \(automatic: 1-minute load average [0-9.]+ on "
                         r"\d+ cores; --threads N overrides\)", caplog.text)
    finally:
        torch.set_num_threads(before)
