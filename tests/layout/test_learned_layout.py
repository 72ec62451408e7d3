"""The trainable planner: data, the layout stage through the shared trainer, export/load, sampling, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kosmos_g_core.layout.labels import CLASS_ID, IGNORE
from kosmos_g_core.layout.learned import LayoutCheckpointError, LearnedPlanner, load_layout_model, save_layout_model
from kosmos_g_core.layout.model import PRESETS, TextToLayoutModel, WordVocab, coarse_tokens, instance_boundaries
from kosmos_g_core.layout.prompt_parser import parse_prompt
from training.data.layout import (
    CocoStuffLayouts,
    LayoutLoader,
    ProceduralLayouts,
    ShardLayouts,
    make_scene,
    write_shards,
)


def test_procedural_captions_name_what_is_drawn():
    for i in range(150):
        sc = make_scene(7, i, 64)
        parsed = parse_prompt(sc.caption)
        drawn = {int(c) for c in np.unique(sc.labels) if c != IGNORE}
        assert {m.class_id for m in parsed.mentions} == drawn, sc.caption
        counts = parsed.counts()
        for cls, n in sc.counts.items():
            if cls < 80:
                assert counts.get(cls) == n, sc.caption
    a, b = make_scene(7, 3), make_scene(7, 3)
    assert a.caption == b.caption and np.array_equal(a.labels, b.labels)


def test_shards_and_loader_resume(tmp_path):
    paths = write_shards(tmp_path, 10, seed=2, size=32, per_shard=4)
    assert len(paths) == 3
    ds = ShardLayouts(paths)
    assert len(ds) == 10 and ds[3]["caption"] == make_scene(2, 3, 32).caption
    np.testing.assert_array_equal(ds[3]["labels"], make_scene(2, 3, 32).labels)
    loader = LayoutLoader(ds, 3, seed=0)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    expected = next(it)["captions"]
    resumed = LayoutLoader(ds, 3, seed=0)
    resumed.load_state_dict(state)
    assert next(iter(resumed))["captions"] == expected


def test_coco_stuff_reader(tmp_path):
    labels = tmp_path / "stuffthingmaps" / "val2017"
    labels.mkdir(parents=True)
    raw = np.full((40, 60), 255, dtype=np.uint8)
    raw[:20] = 156  # sky-other (COCO id 157)
    raw[20:] = 123  # grass (COCO id 124)
    raw[25:35, 10:20] = 19  # sheep (COCO id 20)
    Image.fromarray(raw).save(labels / "000000000001.png")
    captions = {"images": [{"id": 1, "file_name": "000000000001.jpg"}],
                "annotations": [{"image_id": 1, "caption": "A sheep on grass under the sky."}]}
    (tmp_path / "captions_val2017.json").write_text(json.dumps(captions))
    ds = CocoStuffLayouts(tmp_path / "captions_val2017.json", labels, size=20)
    item = ds[0]
    assert item["caption"] == "A sheep on grass under the sky." and item["labels"].shape == (20, 20)
    assert set(np.unique(item["labels"])) == {CLASS_ID["sky-other"], CLASS_ID["grass"], CLASS_ID["sheep"]}
    with pytest.raises(FileNotFoundError, match="stuffthingmaps"):
        CocoStuffLayouts(tmp_path / "captions_val2017.json", tmp_path / "nope")


def test_model_pieces():
    labels = torch.full((1, 8, 8), IGNORE)
    labels[0, :4, :4] = 3
    labels[0, :4, 4:] = 5
    labels[0, 4:, :] = 7
    labels[0, 4, 0] = 3
    assert coarse_tokens(labels, 2).tolist() == [[3, 5, 7, 7]]
    inst = torch.zeros(1, 4, 6, dtype=torch.long)
    inst[0, 1:3, 0:2] = 1
    inst[0, 1:3, 2:4] = 2  # touches instance 1
    inst[0, 1:3, 5] = 3  # alone: no contact line
    assert instance_boundaries(inst)[0].tolist() == [[0] * 6, [0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [0] * 6]


def test_stage_trains_exports_and_plans(tmp_path):
    import training
    from training.train import run
    from training.train_config import load_config

    tiny = Path(training.__file__).parent / "configs" / "tiny" / "layout.toml"
    cfg = load_config(tiny, [f"run.out_dir={tmp_path / 'run'}"])
    result = run(cfg)
    assert all(np.isfinite(result.losses)) and result.export_path
    planner = load_layout_model(result.export_path)
    layout = planner.plan("two sheep on the grass under the sky", width=48, height=40)
    assert layout.label_map.shape == (40, 48) and layout.planner == "learned"
    assert all(e.box[2] > e.box[0] for e in layout.entities)
    # resume from the last checkpoint continues at the saved step
    cfg2 = load_config(tiny, [f"run.out_dir={tmp_path / 'run'}", "run.max_steps=8"])
    assert run(cfg2).start_step == 6


def test_model_without_mention_tokens_trains_saves_loads_and_is_scored(tmp_path):
    """`model.mention_tokens=false`: the model reads the caption only; the file keeps the whole config, so it loads
    back as the same architecture, predicts, and the evaluation scores its parser-free argmax on every column."""
    import dataclasses

    import training
    from training.evaluation.layout import main
    from training.stages.layout import LayoutStage
    from training.train import run
    from training.train_config import load_config

    tiny = Path(training.__file__).parent / "configs" / "tiny" / "layout.toml"
    cfg = load_config(tiny, [f"run.out_dir={tmp_path / 'run'}", "run.max_steps=1", "model.mention_tokens=false"])
    result = run(cfg)
    assert len(result.losses) == 1 and np.isfinite(result.losses[0])
    planner = load_layout_model(result.export_path)
    assert planner.model.config == dataclasses.replace(PRESETS["tiny"], mention_tokens=False)
    assert not any(k.startswith("mention_") for k in planner.model.state_dict())
    layout = planner.plan("two sheep on the grass under the sky", width=32, height=32)
    assert layout.label_map.shape == (32, 32)
    rows = main(["--model", str(result.export_path), "--scenes", "4", "--size", "32", "--argmax"])
    assert all(np.isfinite(rows["learned_argmax"][k]) for k in ("miou", "presence_precision", "presence_recall",
                                                                "count_accuracy", "relation_accuracy"))
    # starting from that file with mention tokens asked for would silently train another architecture: refused
    init = load_config(tiny, [f"run.out_dir={tmp_path / 'run2'}", f"model.init={result.export_path}"])
    with pytest.raises(ValueError, match="mention_tokens = false"):
        LayoutStage().build_model(init, torch.device("cpu"))


def test_sampling_is_seeded_and_diverse():
    torch.manual_seed(0)
    model = TextToLayoutModel(PRESETS["tiny"]).eval()
    vocab = WordVocab.build(["two sheep on the grass"], 256)
    planner = LearnedPlanner(model, vocab)
    a, _ = planner.predict_maps(["two sheep on the grass"], sample=True, seed=1, temperature=3.0)
    b, _ = planner.predict_maps(["two sheep on the grass"], sample=True, seed=1, temperature=3.0)
    c, _ = planner.predict_maps(["two sheep on the grass"], sample=True, seed=2, temperature=3.0)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_clip_mode_reads_a_conditioning(tmp_path):
    torch.manual_seed(0)
    cfg = PRESETS["tiny"].__class__(**{**PRESETS["tiny"].to_dict(), "text_encoder": "clip"})
    path = tmp_path / "clip_layout.safetensors"
    save_layout_model(path, TextToLayoutModel(cfg), None)
    planner = load_layout_model(path)
    layout = planner.plan("anything", width=16, height=16, conditioning=torch.randn(1, 77, 768))
    assert layout.label_map.shape == (16, 16)
    with pytest.raises(ValueError, match="connect a conditioning"):
        planner.plan("anything", width=16, height=16)


def test_checkpoint_errors(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "not_layout.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"format": "kosmos_g"})
    with pytest.raises(LayoutCheckpointError, match="not a KOSMOS-G layout model"):
        load_layout_model(bad)
    with pytest.raises(FileNotFoundError, match="layout model"):
        load_layout_model(tmp_path / "missing.safetensors")


def test_eval_cli_prints_both_planners(tmp_path, capsys):
    from training.evaluation.layout import main

    torch.manual_seed(0)
    ds = ProceduralLayouts(20, 0, 32)
    vocab = WordVocab.build([ds.scene(i).caption for i in range(20)], 256)
    path = tmp_path / "m.safetensors"
    save_layout_model(path, TextToLayoutModel(PRESETS["tiny"]), vocab)
    rows = main(["--model", str(path), "--scenes", "6", "--size", "32", "--best-of", "2",
                 "--json", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert "rule_based" in out and "learned" in out and "best_of_3_miou" in out
    assert 0.0 <= rows["rule_based"]["miou"] <= 1.0 and rows["learned"]["best_of_3_miou"] >= 0.0
    assert json.loads((tmp_path / "s.json").read_text())["scores"]["learned"]["num_images"] == 6


def test_clip_space_stage_with_a_tiny_sd15_text_encoder(tmp_path):
    """`small_clip`-style training: captions encoded by the frozen SD1.5 CLIP text encoder (the space KOSMOS-G's
    AlignerNet writes), here a tiny random one written by training.tiny_assets.write_tiny_sd15."""
    import training
    from training.tiny_assets import write_tiny_sd15
    from training.train import run
    from training.train_config import load_config

    sd15 = write_tiny_sd15(tmp_path / "sd15")
    tiny = Path(training.__file__).parent / "configs" / "tiny" / "layout.toml"
    cfg = load_config(tiny, [f"run.out_dir={tmp_path / 'run'}", "model.preset=tiny_clip", f"sd15.path={sd15}",
                             "run.max_steps=2", "sample.every=0", "checkpoint.every=0"])
    result = run(cfg)
    planner = load_layout_model(result.export_path)
    assert planner.model.config.text_encoder == "clip" and planner.vocab is None
    layout = planner.plan("two sheep", width=16, height=16, conditioning=torch.randn(1, 77, 768))
    assert layout.label_map.shape == (16, 16)
