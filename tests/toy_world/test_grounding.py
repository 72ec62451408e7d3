"""The toy world's stage 3 with the attention grounding loss (training/toy_world/grounding.py): the config builds, the
hooks are attached, the 4 x 4 maps of the test world's base (the first, x8 toy base) are recorded, and one batch gives a finite grounding term whose gradient reaches
every trainable part of KOSMOS-G; the trainer takes one step with it. Runs on tests/data/toy_world (seconds)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from training.toy_world.grounding import gradient_check
from training.toy_world.run import ToyRunConfig, stage_config
from training.toy_world.shards import write_compositional_shards
from training.train import run as train_run
from training.train_config import load_config

WORLD = Path(__file__).resolve().parents[1] / "data" / "toy_world"


def _table(tmp_path: Path, cfg: ToyRunConfig) -> dict:
    shards = tmp_path / "compositional"
    if not shards.is_dir():
        write_compositional_shards(shards, 8, 0, pair_prob=1.0, per_shard=8)  # every scene two subjects
    table = stage_config("stage3", tmp_path, cfg, WORLD / "stage2.safetensors",
                         [{"kind": "compositional", "shards": str(shards)}], 1, 1e-4)
    table["sd15"]["path"] = str(WORLD / "base")
    table["log"] = {"every": 1, "tensorboard": False, "progress": "lines"}
    table["checkpoint"] = {"every": 0, "export_dtype": "fp32"}
    return table


def test_plain_toy_stage3_writes_no_semantic_table(tmp_path):
    assert "semantic" not in _table(tmp_path, ToyRunConfig(batch_size=4))


def test_toy_stage3_with_grounding_gives_a_finite_term_with_gradient(tmp_path):
    from training.toy_world import toml_writer

    assert ToyRunConfig().with_grounding(0.5).stage3_semantic.grounding_sizes == (8,)  # the shipped base's 8 x 8
    table = _table(tmp_path, ToyRunConfig(batch_size=4).with_grounding(0.5, sizes=(4,)))
    # the TOML the toy run hands to the trainer carries the table, with the toy U-Net's map size
    cfg = load_config(toml_writer.write(table, tmp_path / "stage3.toml"))
    assert cfg.semantic["grounding_weight"] == 0.5 and cfg.semantic["grounding_sizes"] == [4]

    result = gradient_check(table)
    assert result["aligner_hooks"] >= 1 and result["aligner_forwards"] == 2  # the batch and the null prompt
    assert result["unet_maps"] and all(shape[1] == 16 for shape in result["unet_maps"].values())  # 4 x 4 maps
    assert result["two_entity_samples"] == 4 and result["entities"] == 8
    assert math.isfinite(result["grounding"]) and result["grounding"] > 0
    grounding = result["grad_norm"]["grounding"]
    assert {"gpt_model", "img_connector", "aligner"} <= set(grounding)
    assert all(math.isfinite(v) and v > 0 for v in grounding.values()), grounding

    train_run(cfg)  # one optimiser step through the trainer, the term logged
    logged = json.loads((tmp_path / "stage3" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(logged["loss/semantic/grounding"]) and logged["loss/semantic/grounding"] > 0


def test_side_attention_scores_own_and_swapped_masks(tmp_path):
    from training.toy_world.grounding import side_attention

    cfg = ToyRunConfig(batch_size=8).with_grounding(1.0, sizes=(4,))
    table = _table(tmp_path, cfg)
    table["semantic"]["grounding_pixel_weight"] = 0.0  # the token term alone: (1 - share inside the mask)^2
    result = side_attention(table, draws=1)
    assert set(result) == {"own", "swapped", "uniform"}
    assert all(0.0 < v < 1.0 for v in result.values()), result
    assert result["own"] != result["swapped"]  # the masks were swapped, so the two terms differ
