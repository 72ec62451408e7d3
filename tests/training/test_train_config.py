"""Stage configs: the shipped TOMLs parse, dotted overrides are typed, unknown keys are errors, the resolved
config is written to the run folder and loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.optim import lr_factor
from training.train_config import apply_overrides, config_from_dict, load_config, save_resolved

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


@pytest.mark.parametrize("name", ["stage1", "stage2", "stage3", "tiny/stage1", "tiny/stage2", "tiny/stage3"])
def test_shipped_configs_parse(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert cfg.stage == name.split("/")[-1]
    assert cfg.data["sources"] and cfg.data["batch_size"] >= 1
    if "/" not in name:  # the paper's optimiser settings
        assert cfg.optim.betas == (0.9, 0.98) and cfg.optim.eps == 1e-6 and cfg.optim.weight_decay == 0.01
        assert cfg.optim.clip_norm == 2.0 and cfg.optim.warmup_steps == 375
        assert cfg.parallel.precision == "bf16" and cfg.checkpoint.resume == "latest"


def test_stage3_keeps_the_official_laion_image_size_filter():
    """laion2b_loader.py:66-71: outside the align stage, LAION images under 384 px a side are dropped."""
    from training.data.config import parse_data_config

    sources = parse_data_config("stage3", load_config(CONFIGS / "stage3.toml").data).sources
    assert {s.kind: s.min_image_side for s in sources} == {"captions": 384, "editing": 0, "compositional": 0}


def test_overrides_are_parsed_as_toml_values(tmp_path):
    cfg = load_config(CONFIGS / "stage2.toml", ["optim.lr=1e-4", "data.batch_size=8", "parallel.strategy=fsdp",
                                                 "optim.betas=[0.9, 0.95]", "log.wandb=true", "run.out_dir=/x/y"])
    assert cfg.optim.lr == 1e-4 and cfg.data["batch_size"] == 8 and cfg.parallel.strategy == "fsdp"
    assert cfg.optim.betas == (0.9, 0.95) and cfg.log.wandb is True and cfg.run.out_dir == "/x/y"
    path = save_resolved(cfg, tmp_path)
    again = config_from_dict(json.loads(path.read_text()))
    assert again.to_dict() == cfg.to_dict()
    assert apply_overrides({}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


def test_unknown_keys_and_bad_overrides_are_errors():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lrate'\] in \[optim\]"):
        config_from_dict({"stage": "stage2", "optim": {"lrate": 1}})
    with pytest.raises(ValueError, match="unknown table"):
        config_from_dict({"stage": "stage2", "optimizer": {}})
    with pytest.raises(ValueError, match="missing top-level key `stage`"):
        config_from_dict({})
    with pytest.raises(ValueError, match="dotted.key=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(FileNotFoundError, match="TOML"):
        load_config("nope.toml")


def test_warmup_then_linear_decay_to_zero():
    assert lr_factor(0, 375, 300000, 0.0) == pytest.approx(1 / 375)
    assert lr_factor(374, 375, 300000, 0.0) == 1.0
    assert lr_factor(375, 375, 300000, 0.0) == 1.0
    assert lr_factor(375 + (300000 - 375) // 2, 375, 300000, 0.0) == pytest.approx(0.5, abs=1e-4)
    assert lr_factor(300000, 375, 300000, 0.0) == 0.0
    assert lr_factor(300000, 375, 300000, 0.1) == pytest.approx(0.1)


def test_the_console_line_leaves_out_skip_counters_still_at_zero(tmp_path, caplog):
    import logging

    from training.metrics_log import MetricsLogger

    logger = MetricsLogger(tmp_path, enabled=True, tensorboard=False, wandb=False, wandb_project="", progress="lines",
                           total_steps=10, start_step=0, config={})
    with caplog.at_level(logging.INFO, logger="training.metrics_log"):
        logger.log(1, {"loss/total": 1.5, "data/skipped_corrupt": 0.0, "data/skipped_empty": 2.0})
    logger.close()
    assert "loss/total=1.5" in caplog.text and "data/skipped_empty=2" in caplog.text
    assert "skipped_corrupt" not in caplog.text
