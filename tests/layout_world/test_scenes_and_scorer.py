"""The layout world's scenes, its exact scorer and the planners on its prompts."""

import io
import random

import numpy as np
from PIL import Image

from kosmos_g_core.layout import RuleBasedPlanner
from kosmos_g_core.layout.labels import CLASS_ID
from training.layout_world.scenes import GROUNDS, THINGS, LayoutScene, make_scene, render, scenes
from training.layout_world.scorer import read_labels, read_scene, score_pictures


def test_scene_sets_are_fixed_and_captions_say_what_is_drawn():
    a, b = scenes(3, 50), scenes(3, 50)
    assert [s.caption for s in a] == [s.caption for s in b]
    assert all((x.labels == y.labels).all() for x, y in zip(a, b, strict=True))
    assert [s.caption for s in scenes(4, 50)] != [s.caption for s in a]
    for s in scenes(0, 300):
        assert s.caption.endswith(f"on the {s.ground}") and s.ground in GROUNDS
        assert all(name in THINGS and 1 <= n <= 3 for name, n in s.counts)
        assert (s.relation is None) == (len(s.counts) == 1)
        assert int(s.instances.max()) == sum(n for _, n in s.counts)
    scene = make_scene(random.Random(0))
    assert isinstance(scene, LayoutScene) and scene.labels.shape == (32, 32)


def test_rendered_scenes_are_read_back_exactly():
    batch = scenes(5, 300)
    pictures = [render(s.labels) for s in batch]
    for p, s in zip(pictures, batch, strict=True):
        assert (read_labels(p) == s.labels).all()
    scores = score_pictures(pictures, batch, [s.labels for s in batch])
    assert scores == {"presence": 1.0, "count_accuracy": 1.0, "relation_accuracy": 1.0, "text_fidelity": 1.0,
                      "extra_things": 0.0, "exact": 1.0, "faithfulness_miou": 1.0}


def test_reading_survives_jpeg_and_resizing():
    """Generated pictures are not clean: a 64 px bicubic JPEG of every scene still reads back nearly exactly."""
    batch = scenes(6, 300)

    def degrade(a):
        buf = io.BytesIO()
        Image.fromarray(a).resize((64, 64), Image.BICUBIC).save(buf, "JPEG", quality=85)
        return Image.open(io.BytesIO(buf.getvalue()))

    scores = score_pictures([degrade(render(s.labels)) for s in batch], batch, [s.labels for s in batch])
    assert scores["count_accuracy"] >= 0.95 and scores["relation_accuracy"] == 1.0
    assert scores["text_fidelity"] == 1.0 and scores["faithfulness_miou"] >= 0.8


def test_scorer_sees_a_missing_thing_a_swapped_side_and_a_wrong_ground():
    scene = next(s for s in scenes(7, 100) if s.relation is not None and dict(s.counts)[s.counts[0][0]] >= 2)
    first = CLASS_ID[scene.counts[0][0]]
    labels = scene.labels.copy()
    one = scene.instances == int(scene.instances[labels == first].min())
    labels[one] = CLASS_ID[scene.ground]  # paint one thing of the first class over
    r = read_scene(labels, scene)
    assert r.count == 0.5 and r.presence == 1.0 and not r.exact
    mirrored = read_scene(scene.labels[:, ::-1], scene)  # the relation flips, counts stay
    assert mirrored.relation == 0.0 and mirrored.count == 1.0
    other = next(g for g in GROUNDS if g != scene.ground)
    grounded = np.where(scene.labels == CLASS_ID[scene.ground], CLASS_ID[other], scene.labels).astype(np.uint8)
    assert not read_scene(grounded, scene).ground


def test_rule_based_planner_understands_the_prompts():
    """The prompts use the planner's words: its layouts have the asked counts and sides (measured 0.97 / 1.00)."""
    batch = scenes(8, 200)
    layouts = [RuleBasedPlanner().plan(s.caption, width=32, height=32).label_map for s in batch]
    readings = [read_scene(lab, s) for lab, s in zip(layouts, batch, strict=True)]
    assert np.mean([r.count for r in readings]) >= 0.95
    assert np.mean([r.relation for r in readings if r.relation is not None]) >= 0.99
    assert all(r.ground for r in readings)


def test_shipped_base_is_small_fp16_and_draws_the_ground_it_is_told():
    """The study's frozen base: fp16, SD1.5's folder layout, and (sampled briefly) the ground the caption names."""
    import torch
    from safetensors import safe_open

    from training.evaluation.sampler import DiffusionSampler, to_pil
    from training.layout_world.base_model import SHIPPED_LAYOUT_BASE
    from training.toy_world.base_model import encode_text, load_text_side

    files = sorted(SHIPPED_LAYOUT_BASE.rglob("*.safetensors"))
    assert len(files) == 3 and sum(f.stat().st_size for f in files) < 12e6
    for f in files:
        with safe_open(f, "pt") as weights:
            assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F16"}, f
    batch = scenes(11, 12)
    tok, text = load_text_side(SHIPPED_LAYOUT_BASE)
    with torch.no_grad():
        cond, uncond = encode_text(tok, text, [s.caption for s in batch]), encode_text(tok, text, [""])
    images = DiffusionSampler.from_folder(SHIPPED_LAYOUT_BASE).sample(
        cond, uncond, steps=10, guidance=5.0, resolution=32, generator=torch.Generator().manual_seed(0))
    assert score_pictures(to_pil(images), batch)["text_fidelity"] >= 0.9
