"""The demo says what it does and how long it takes, the same in its --help, the README and docs/evaluation.md, and
logs the thread count it runs with."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from training import demo
from training.toy_world.run import DEFAULT_THREADS, set_threads

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_time_is_the_same_everywhere():
    minutes = re.search(r"([0-9.]+) minutes measured on a 2-core CPU", demo.__doc__).group(1)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    docs = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
    assert f"It took {minutes} minutes on a 2-core CPU" in " ".join(readme.split())
    assert f"**{minutes} minutes**" in docs
    for text in (demo.__doc__, readme, docs):
        text = " ".join(text.split())
        assert "--threads N" in text and "2 threads" in text and "never different" in text


def test_the_thread_count_is_fixed_and_logged(caplog):
    before = torch.get_num_threads()
    try:
        args = demo_parser_defaults()
        assert args.threads == DEFAULT_THREADS == 2  # not the machine's load: the numbers depend on the count
        with caplog.at_level(logging.INFO, logger="training.toy_world.run"):
            set_threads(3)
        assert torch.get_num_threads() == 3 and "using 3 torch CPU threads" in caplog.text
    finally:
        torch.set_num_threads(before)


def demo_parser_defaults():
    import argparse

    from training.toy_world.run import add_thread_option

    parser = argparse.ArgumentParser()
    add_thread_option(parser)
    return parser.parse_args([])


def test_the_demo_runs_the_recipe_its_numbers_were_measured_with():
    """The documented demo time and scores are those of the study's recipe (pretrained vision tower, half two-subject
    scenes in stage 3) at 1,000 / 500 / 1,000 steps with 100 + 100 prompts per condition: a change of the study's
    recipe must not change the demo silently."""
    from training.toy_world.evaluate import EvalSettings
    from training.toy_world.run import ToyRunConfig
    from training.toy_world.vision_pretrain import VisionPretrainConfig

    cfg = ToyRunConfig.demo()
    assert (cfg.stage1_steps, cfg.stage2_steps, cfg.stage3_steps) == (1000, 500, 1000)
    assert cfg.vision_pretrain == VisionPretrainConfig() and cfg.stage1_trainable == ()
    assert (cfg.stage1_off_palette, cfg.stage1_single_attribute) == (0.5, False)
    assert (cfg.stage1_lr, cfg.stage2_lr, cfg.stage3_lr, cfg.stage3_pair_prob, cfg.batch_size) == (1e-3, 1e-3, 1e-4,
                                                                                                  0.5, 16)
    assert cfg.eval == EvalSettings() and (cfg.eval.repeats, cfg.eval.two_entity, cfg.eval.steps) == (1, 100, 25)
    assert "1,000 / 500 / 1,000 steps" in demo.__doc__ and "assets/vision_tower" in demo.__doc__
