"""The toy world's CLIP: the wide picture world never shows a held-out subject, and pretraining teaches the tower."""

import random
from collections import Counter
from dataclasses import replace

import pytest
import torch

from kosmos_g_core.vision import VisionTransformer
from training.toy_world.scenes import COLOURS, SHAPES, Subject, all_subjects, is_held_out, nearest, shows_held_out
from training.toy_world.vision_pretrain import (
    SHIPPED_VISION_TOWER,
    VisionPretrainConfig,
    load_pretrained_tower,
    main,
    pretrain_vision_tower,
    toy_vision_config,
    wide_world_picture,
)


def test_wide_world_draws_every_seen_combination_and_no_held_out_one_in_any_shade():
    rng = random.Random(0)
    seen = Counter()
    palette = 0
    for _ in range(3000):
        picture, shape_index, colour = wide_world_picture(rng)
        shape = list(SHAPES)[shape_index]
        assert not shows_held_out(shape, colour)
        assert picture.getpixel((picture.width // 2, picture.height // 2)) == colour  # the subject is drawn in it
        seen[Subject(shape, nearest(colour, COLOURS))] += 1
        palette += colour in COLOURS.values()
    assert {s for s in all_subjects() if not is_held_out(s)} == set(seen)
    assert all(not is_held_out(s) for s in seen)
    assert palette == 0  # colours come from the whole RGB cube, not from the palette


def test_shows_held_out_reads_a_shade_as_its_nearest_palette_colour():
    held = next(s for s in all_subjects() if is_held_out(s))
    shade = tuple(min(255, c + 20) for c in COLOURS[held.colour])
    assert shows_held_out(held.shape, COLOURS[held.colour]) and shows_held_out(held.shape, shade)
    other_shape = next(s for s in SHAPES if not is_held_out(Subject(s, held.colour)))
    assert not shows_held_out(other_shape, shade)


def _tower(seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    return VisionTransformer(toy_vision_config())


def test_pretraining_teaches_the_tower_and_reads_the_palette_subjects():
    before = pretrain_vision_tower(_tower(0), VisionPretrainConfig(steps=1, batch_size=32), seed=0)
    tower = _tower(0)
    start = {k: v.clone() for k, v in tower.state_dict().items()}
    after = pretrain_vision_tower(tower, VisionPretrainConfig(steps=80, batch_size=32), seed=0)
    assert after["colour_loss"] < 0.2 * before["colour_loss"]
    assert after["shape_loss"] < before["shape_loss"]
    assert all(not torch.equal(start[k], v) for k, v in tower.state_dict().items() if k.endswith("weight"))
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training
    for key in ("shape_seen", "shape_held_out", "colour_seen", "colour_held_out"):
        assert 0.0 <= after[key] <= 1.0
    assert after["colour_seen"] >= 0.8  # the colour head reads the palette colours after 80 steps


def test_a_saved_tower_loads_back_and_bad_folders_are_named(tmp_path):
    before = torch.get_num_threads()
    main(["--out", str(tmp_path / "tower"), "--preset", "test", "--threads", "1"])
    torch.set_num_threads(before)
    saved = _tower(0)
    pretrain_vision_tower(saved, VisionPretrainConfig.test(), seed=0)  # what main made: the same seed and steps
    loaded = _tower(1)
    record = load_pretrained_tower(loaded, tmp_path / "tower")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in saved.state_dict().items())
    assert record["config"]["steps"] == 3 and record["seed"] == 0 and record["threads"] == 1
    assert record["vision"]["patch_size"] == 7 and set(record["measured"]) >= {"shape_held_out", "colour_held_out"}
    with pytest.raises(FileNotFoundError, match=r"vision_tower\.safetensors is missing"):
        load_pretrained_tower(_tower(0), tmp_path)
    wide = VisionTransformer(replace(toy_vision_config(), width=32, heads=1))
    with pytest.raises(ValueError, match=r"tower[/\\]vision_tower\.safetensors is not a tower of the toy"):
        load_pretrained_tower(wide, tmp_path / "tower")


def test_the_shipped_tower_is_the_toy_kosmos_g_tower_and_says_how_it_was_made():
    tower = _tower(0)
    record = load_pretrained_tower(tower, SHIPPED_VISION_TOWER)
    assert record["config"] == {"steps": 3000, "batch_size": 64, "lr": 1e-3, "colour_weight": 10.0}
    assert record["seed"] == 0 and record["measured"]["shape_seen"] == 1.0
