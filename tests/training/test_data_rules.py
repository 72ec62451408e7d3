"""Sampling rules: official tag handling, the p=0.5 rules (statistically, fixed seeds), the source mixture."""

from __future__ import annotations

import json
import random

import torch

from kosmos_g_core.image import CLIP_MEAN, CLIP_STD
from training.data.config import parse_data_config
from training.data.entities import entity_order, keep_entity, place_entities
from training.data.features import FeatureContext, sample_features
from training.data.mixing import SourceSchedule
from training.data.shards import RawSample
from training.data.synthetic import synthetic_sample

TRIALS = 300


def test_tag_filter_matches_the_official_rules():
    names = ["dog", "dog bed", "red", "cat", "mat", "at"]
    caption = "A red dog sleeps on a dog bed while the cat watches"
    assert not keep_entity("red", names, caption)  # colour word
    assert not keep_entity("dog", names, caption)  # nested in "dog bed": ambiguous
    assert keep_entity("dog bed", names, caption)
    assert not keep_entity("mat", names, caption)  # not in the caption
    assert not keep_entity("at", names, caption)  # only inside other words, never a whole word
    assert keep_entity("cat", names, caption)
    assert entity_order(caption, names) == [1, 3]  # sorted by position in the caption


def test_place_entities_walks_the_caption_and_extends_words():
    caption = "the dog's ball and a cat"
    slots, tail = place_entities(caption, ["cat", "dog"], drop_words=False)
    assert [s.name for s in slots] == ["dog", "cat"]
    assert slots[0].text == "the dog's" and slots[0].prefix == "the "  # extended to the end of the word
    assert slots[1].text == " ball and a cat" and tail == ""
    dropped, tail = place_entities(caption, ["cat", "dog"], drop_words=True)
    assert [s.text for s in dropped] == ["the ", " ball and a "]
    # An entity named twice in the caption is placed once, at its first occurrence.
    slots, tail = place_entities("a dog and another dog", ["dog"], drop_words=False)
    assert len(slots) == 1 and tail == " and another dog"


def _context(tokenizer, stage="stage3"):
    config = parse_data_config(stage, {"sources": [{"kind": "compositional", "shards": "x.tar"}]})
    return FeatureContext(stage=stage, tokenizer=tokenizer, config=config, image_size=28, target_size=16)


def _raw(kind, index):
    sample = synthetic_sample(kind, index)
    members = {}
    for k, v in sample.items():
        if k == "__key__":
            continue
        members[k] = v if isinstance(v, bytes) else (v.encode() if isinstance(v, str) else json.dumps(v).encode())
    return RawSample(key=sample["__key__"], url="mem", members=members, uid=(0, 0, index))


def _is_white_corner(pixels: torch.Tensor) -> bool:
    white = (1.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    return bool(torch.allclose(pixels[:, 0, 0], white, atol=0.05))


def test_compositional_p05_rules(kosmos_tokenizer):
    ctx = _context(kosmos_tokenizer)
    source = ctx.config.sources[0]
    raw = _raw("compositional", 3)
    names = [e["name"] for e in json.loads(raw.members["json"])["entities"]]
    dropped = cutouts = images = 0
    for trial in range(TRIALS):
        features = sample_features(ctx, source, raw, random.Random(trial))
        kept = [name in features.prompt for name in names]
        assert all(kept) or not any(kept)  # one word-drop coin per sample, as the official loader
        dropped += not kept[0]
        for pixels in features.pixels:
            images += 1
            cutouts += _is_white_corner(pixels)  # the cut-out has a white background, the crop does not
    assert 0.4 < dropped / TRIALS < 0.6
    assert images == 2 * TRIALS and 0.4 < cutouts / images < 0.6


def test_editing_input_caption_dropped_half_the_time(kosmos_tokenizer):
    ctx = _context(kosmos_tokenizer)
    source = parse_data_config("stage3", {"sources": [{"kind": "editing", "shards": "x.tar"}]}).sources[0]
    raw = _raw("editing", 5)
    dropped = 0
    for trial in range(TRIALS):
        features = sample_features(ctx, source, raw, random.Random(trial))
        before_image = features.prompt.split("<i>")[0]
        dropped += before_image == ""
        # Layout: [<s>] (+ caption) + <image> x65 + </image> + edit
        assert features.ids[0] == kosmos_tokenizer.BOS
        if before_image == "":
            assert features.ids[1] == kosmos_tokenizer.BOI
    assert 0.4 < dropped / TRIALS < 0.6


def test_probabilities_are_configurable(kosmos_tokenizer):
    config = parse_data_config(
        "stage3",
        {"sources": [{"kind": "compositional", "shards": "x.tar"}], "drop_entity_word_prob": 0.0, "cutout_prob": 1.0},
    )
    ctx = FeatureContext(stage="stage3", tokenizer=kosmos_tokenizer, config=config, image_size=28, target_size=16)
    raw = _raw("compositional", 1)
    for trial in range(20):
        features = sample_features(ctx, config.sources[0], raw, random.Random(trial))
        assert all(len(index) > 64 for index in features.entity_token_index)  # the words are always kept
        assert all(_is_white_corner(p) for p in features.pixels)


def test_default_stage3_weights_are_1_2_2():
    config = parse_data_config(
        "stage3",
        {"sources": [{"kind": k, "shards": "x.tar"} for k in ("captions", "editing", "compositional")]},
    )
    assert [s.weight for s in config.sources] == [1.0, 2.0, 2.0]


def test_mixture_proportions_follow_the_weights():
    schedule = SourceSchedule([1, 2, 2], seed=0)
    steps = 5000
    counts = schedule.count_before(steps)
    for count, expected in zip(counts, (0.2, 0.4, 0.4), strict=True):
        assert abs(count / steps - expected) < 0.03
    # Deterministic, shared by all ranks by default; per-rank schedules differ from each other.
    assert [schedule.source_at(k) for k in range(50)] == [SourceSchedule([1, 2, 2], 0).source_at(k) for k in range(50)]
    rank0 = [SourceSchedule([1, 2, 2], 0, rank=0).source_at(k) for k in range(50)]
    rank1 = [SourceSchedule([1, 2, 2], 0, rank=1).source_at(k) for k in range(50)]
    assert rank0 != rank1
    assert SourceSchedule([0, 1], seed=3).count_before(100) == [0, 100]
