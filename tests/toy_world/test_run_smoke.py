"""The whole toy-world pipeline at smoke size: base model, the real stage 1-3 trainer, export, load, evaluation."""

import json
import shutil

import torch

from training.toy_world.run import ToyRunConfig, run


def test_smoke_run_end_to_end(tmp_path):
    results = run(tmp_path, ToyRunConfig.smoke())
    for stage in ("stage1", "stage2", "stage3"):
        assert (tmp_path / stage / "export.safetensors").is_file()
        assert (tmp_path / "configs" / f"{stage}.toml").is_file()
    assert set(results["conditions"]) == {"after_stage3_image", "after_stage3_text", "before_stage3_image",
                                          "base_text", "base_text_described"}
    for scores in results["conditions"].values():
        assert scores["images"] == 10 and 0.0 <= scores["subject_fidelity"] <= 1.0
    assert set(results["two_entity"]) == set(results["conditions"])
    for scores in results["two_entity"].values():
        assert scores["images"] == 4 and 0.0 <= scores["entity_exact"] <= 1.0
        assert scores["seen_pairs_images"] + scores["held_out_pairs_images"] == 4
    assert (tmp_path / "eval" / "two_entity_grid.png").stat().st_size > 1000
    align = results["stage2_alignment"]["stage2"]
    assert align["mse"] > 0 and align["constant_baseline_mse"] > 0
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["sampling"]["images_per_condition"] == 10
    assert (tmp_path / "eval" / "samples_grid.png").stat().st_size > 1000
    assert "after_stage3_image" in (tmp_path / "eval" / "results.md").read_text()
    # The init carries the pretrained vision tower, and stage 1 trains only its last block and ln_post (KOSMOS-1's
    # recipe, the trainer's default selection).
    from safetensors.torch import load_file

    init, stage1 = load_file(tmp_path / "init.safetensors"), load_file(tmp_path / "stage1" / "export.safetensors")
    tower = [k for k in init if k.startswith("img_model.visual.")]
    trained = {k for k in tower if not torch.equal(init[k], stage1[k])}
    assert trained and all(".resblocks.1." in k or ".ln_post." in k for k in trained)
    assert json.loads((tmp_path / "vision_pretrain.json").read_text())["config"]["steps"] == 3
    timings = json.loads((tmp_path / "timings.json").read_text())["timings_seconds"]
    assert {"base_model", "init", "stage1", "stage2", "stage3", "evaluation", "total"} <= set(timings)

    # Run again on the same folder: every step is skipped, the evaluation reads back its conditions (each evaluated
    # once, its file untouched) and scores them again.
    conditions = tmp_path / "eval" / "conditions"
    saved_at = {p.name: p.stat().st_mtime_ns for p in conditions.iterdir()}
    assert sorted(saved_at) == sorted(f"{name}.pt" for name in results["conditions"])
    record = (tmp_path / "timings.json").read_text()
    again = run(tmp_path, ToyRunConfig.smoke())
    assert again["conditions"] == results["conditions"]
    assert {p.name: p.stat().st_mtime_ns for p in conditions.iterdir()} == saved_at
    # Nothing trained or generated (a re-scoring): the record of the run that did is kept as it was.
    assert again["generated_conditions"] == [] and len(results["generated_conditions"]) == 5
    assert (tmp_path / "timings.json").read_text() == record

    # Evaluated again from nothing, the base model's conditions in a folder of their own (a study's, shared by its
    # seeds): the same numbers.
    shutil.rmtree(conditions)
    shared = tmp_path / "shared"
    apart = run(tmp_path, ToyRunConfig.smoke(), base_conditions=shared)
    for section in ("conditions", "two_entity"):  # as JSON: a NaN share (no held-out pair) equals itself there
        assert json.dumps(apart[section], sort_keys=True) == json.dumps(results[section], sort_keys=True)
    assert sorted(p.name for p in shared.iterdir()) == ["base_text.pt", "base_text_described.pt"]
    assert len(list(conditions.iterdir())) == 3
    # That evaluation ran, so the record is rewritten, and the skipped steps keep their times.
    resumed = json.loads((tmp_path / "timings.json").read_text())["timings_seconds"]
    assert all(resumed[k] == timings[k] for k in ("data", "base_model", "stage1", "stage2", "stage3"))
    assert resumed["total"] >= sum(timings[k] for k in ("base_model", "stage1", "stage2", "stage3"))

    # The diagnostics read the same run folder: every stage export, attribute choice a share of the 20 subjects (and
    # of the 5 held-out ones).
    from training.toy_world.diagnose import diagnose_run, format_table

    diagnosis = diagnose_run(tmp_path)
    assert set(diagnosis) == {"stage1", "stage2", "stage3"}
    for row in diagnosis.values():
        for kind in ("scene", "cutout"):
            assert round(row[f"caption_choice_{kind}"] * 20, 6) % 1 == 0.0
            assert round(row[f"caption_choice_{kind}_held_out"] * 5, 6) % 1 == 0.0
            for attribute in ("colour", "shape"):
                assert round(row[f"choice_{kind}_{attribute}_all"] * 20, 6) % 1 == 0.0
                assert round(row[f"choice_{kind}_{attribute}_held_out"] * 5, 6) % 1 == 0.0
    assert diagnosis["stage3"]["spread_across_images"] >= 0 and "spread_across_images" not in diagnosis["stage1"]
    assert round(diagnosis["stage3"]["routing_one_subject"] * 20, 6) % 1 == 0.0
    assert round(diagnosis["stage3"]["routing_pair_order"] * 60, 6) % 1 == 0.0  # 60 two-entity cases
    assert "routing_pair_order" not in diagnosis["stage1"]
    assert diagnosis["stage2"]["pair_caption_mse"] > 0 and 0.0 <= diagnosis["stage2"]["pair_caption_order"] <= 1.0
    assert diagnosis["stage3"]["pair_caption_order_spread"] >= 0
    assert json.loads((tmp_path / "diagnose.json").read_text())["chance_choice"] == {"caption": 0.05, "colour": 0.2,
                                                                                "shape": 0.25}
    assert format_table(diagnosis).count("\n") == 5


def test_sdxl_smoke_run_trains_kosmos_g_for_sdxl(tmp_path):
    """The same pipeline against an SDXL-shaped toy base: stages 2 and 3 export KOSMOS-G for SDXL (a context of
    the base's width and a pooled head), and every condition is sampled and scored through the SDXL U-Net."""
    from dataclasses import replace

    import pytest

    from kosmos_g_core.checkpoint import load_checkpoint

    smoke = ToyRunConfig.smoke()
    cfg = replace(smoke, eval=replace(smoke.eval, batch=4)).in_sdxl()  # several sampling batches per condition
    results = run(tmp_path, cfg)
    for stage in ("stage2", "stage3"):
        model = load_checkpoint(tmp_path / stage / "export.safetensors")
        assert model.config.aligner.is_sdxl
        assert model.config.pooled_dim == cfg.base.pooled_dim
        assert model.config.condition_shape[1] == cfg.base.context_dim
    assert json.loads((tmp_path / "timings.json").read_text())["base_kind"] == "sdxl"
    for scores in results["conditions"].values():
        assert scores["images"] == 10 and 0.0 <= scores["subject_fidelity"] <= 1.0
    assert set(results["two_entity"]) == set(results["conditions"])

    # an SDXL run refuses an SD1.5-shaped base folder, naming it
    from training.toy_world.base_model import SHIPPED_BASE

    with pytest.raises(ValueError, match=r"is sd15-shaped but this run is for sdxl"):
        run(tmp_path / "other", cfg, base=SHIPPED_BASE)


def test_diagnose_names_the_folder_when_there_is_no_run(tmp_path):
    import pytest

    from training.toy_world.diagnose import diagnose_run

    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        diagnose_run(tmp_path)


def test_a_run_records_the_command_that_started_it(monkeypatch):
    from training.toy_world.run import invoked_command

    # the study's seed processes inherit the study's argv: the record names the study, not the run module
    monkeypatch.setattr("sys.argv", ["/x/training/toy_world/study.py", "--out", "o", "--jobs", "3"])
    assert invoked_command() == "python -m training.toy_world.study --out o --jobs 3"
    monkeypatch.setattr("sys.argv", ["/x/y/training/demo.py"])
    assert invoked_command() == "python -m training.demo"


def test_run_and_study_offer_the_same_recipe_options():
    """`--stage1-off-palette` and `--random-vision` mean the same in `run` and `study`; a share outside [0, 1] is
    refused with the option's name, and leaving the options out keeps the default recipe."""
    import argparse
    from dataclasses import replace

    import pytest

    from training.toy_world.run import ToyRunConfig, add_recipe_options, apply_recipe_options

    parser = argparse.ArgumentParser()
    add_recipe_options(parser)
    assert apply_recipe_options(ToyRunConfig(), parser.parse_args([])) == ToyRunConfig()
    assert apply_recipe_options(ToyRunConfig(), parser.parse_args(["--stage1-off-palette", "0"])) == ToyRunConfig(
        stage1_off_palette=0.0)
    # --random-vision is the studies before vision pretraining (no off-palette pictures) unless told otherwise
    assert apply_recipe_options(ToyRunConfig(), parser.parse_args(["--random-vision"])).stage1_off_palette == 0.0
    cfg = apply_recipe_options(ToyRunConfig(), parser.parse_args(["--stage1-off-palette", "0.3", "--random-vision"]))
    assert cfg == replace(ToyRunConfig().with_random_vision(), stage1_off_palette=0.3)
    with pytest.raises(SystemExit, match="--stage1-off-palette"):
        apply_recipe_options(ToyRunConfig(), parser.parse_args(["--stage1-off-palette", "1.5"]))
