"""Batch formats and shapes of every stage and source kind, on tiny synthetic shards written to tmp_path."""

from __future__ import annotations

import itertools

import pytest
import torch

from training.data import DataConfigError, build_dataloader
from training.data.synthetic import write_synthetic_shards
from training.data.writer import ShardWriter

IMAGE = 28
TARGET = 16


def _loader(tmp_path, tokenizer, stage, kinds, batch_size=2, num_workers=0, **extra):
    sources = []
    for kind in kinds:
        folder = tmp_path / kind
        if not folder.exists():
            write_synthetic_shards(folder, kind, num_samples=6, samples_per_shard=3)
        sources.append({"kind": kind, "shards": str(folder)})
    cfg = {"num_workers": num_workers, "sources": sources, **extra}
    return build_dataloader(
        stage, cfg, tokenizer, image_size=IMAGE, target_size=TARGET, batch_size=batch_size, rank=0, world_size=1, seed=0
    )


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _check_prompt_tensors(batch, tokenizer, images_per_sample):
    tokens, image_mask, pixels = batch["tokens"], batch["image_mask"], batch["pixels"]
    assert tokens.dtype == torch.long and image_mask.dtype == torch.bool
    assert tokens.shape == image_mask.shape and tokens.shape[0] == 2
    assert (tokens[:, 0] == tokenizer.BOS).all()
    assert pixels.shape == (2 * images_per_sample, 3, IMAGE, IMAGE) and pixels.dtype == torch.float32
    assert int(image_mask.sum()) == 64 * pixels.shape[0]
    assert (tokens[image_mask] == tokenizer.BOI).all()
    # Padding is <pad> (1) and never an image slot.
    assert not image_mask[tokens == tokenizer.PAD].any()


@pytest.mark.parametrize(("kind", "images"), [("text", 0), ("captions", 1), ("interleaved", 2)])
def test_stage1_batches(tmp_path, kosmos_tokenizer, kind, images):
    for batch in _take(_loader(tmp_path, kosmos_tokenizer, "stage1", [kind]), 3):
        _check_prompt_tensors(batch, kosmos_tokenizer, images)
        tokens, image_mask, loss_mask = batch["tokens"], batch["image_mask"], batch["loss_mask"]
        assert loss_mask.dtype == torch.bool and loss_mask.shape == tokens.shape
        for row in range(2):
            length = int((tokens[row] != kosmos_tokenizer.PAD).sum())
            assert tokens[row, length - 1] == kosmos_tokenizer.EOS  # stage 1 documents end with </s>
            for t in range(tokens.shape[1]):
                nxt_is_text = (
                    t + 1 < length and not image_mask[row, t + 1] and tokens[row, t + 1] != kosmos_tokenizer.BOI
                )
                assert bool(loss_mask[row, t]) == nxt_is_text
        assert sorted(batch) == ["image_mask", "keys", "loss_mask", "pixels", "prompt", "source", "tokens"]


def test_stage1_caption_layout_is_image_then_caption(tmp_path, kosmos_tokenizer):
    batch = _take(_loader(tmp_path, kosmos_tokenizer, "stage1", ["captions"]), 1)[0]
    tok = kosmos_tokenizer
    row = batch["tokens"][0].tolist()
    assert row[:67] == [tok.BOS] + [tok.BOI] * 65 + [tok.EOI]
    assert batch["prompt"][0].startswith("<i>a ")


def test_stage2_batches_and_caption_rules(tmp_path, kosmos_tokenizer):
    loader = _loader(tmp_path, kosmos_tokenizer, "stage2", ["captions"])
    for batch in _take(loader, 3):
        assert sorted(batch) == ["captions", "keys", "source", "tokens"]
        assert batch["tokens"].shape[0] == 2 and (batch["tokens"][:, 0] == kosmos_tokenizer.BOS).all()
        for row, caption in enumerate(batch["captions"]):
            ids = [kosmos_tokenizer.BOS] + kosmos_tokenizer.encode(caption)
            assert batch["tokens"][row, : len(ids)].tolist() == ids

    # caption_filter (the trainer's "<= 75 CLIP tokens") drops what it rejects, and it is counted.
    filtered = build_dataloader(
        "stage2",
        {"num_workers": 0, "sources": [{"kind": "captions", "shards": str(tmp_path / "captions")}]},
        kosmos_tokenizer,
        image_size=IMAGE,
        target_size=TARGET,
        batch_size=2,
        rank=0,
        world_size=1,
        seed=0,
        caption_filter=lambda caption: not caption.endswith(("0", "1", "2")),
    )
    for batch in _take(filtered, 3):
        assert not any(c.endswith(("0", "1", "2")) for c in batch["captions"])
    assert filtered.stats["skipped_caption_filter"] >= 3


def test_stage2_drops_captions_over_the_token_limit(tmp_path, kosmos_tokenizer):
    with ShardWriter(tmp_path / "long", "captions", 4) as writer:
        for i in range(8):
            writer.write({"__key__": f"k{i}", "txt": " ".join(["dog"] * (i + 1))})  # 1..8 tokens
    cfg = {"num_workers": 0, "sources": [{"kind": "captions", "shards": str(tmp_path / "long")}]}
    cfg["sources"][0]["max_caption_tokens"] = 4
    loader = build_dataloader(
        "stage2",
        cfg,
        kosmos_tokenizer,
        image_size=IMAGE,
        target_size=TARGET,
        batch_size=1,
        rank=0,
        world_size=1,
        seed=0,
    )
    for batch in _take(loader, 8):
        assert len(kosmos_tokenizer.encode(batch["captions"][0])) <= 4
    assert loader.stats["skipped_long_caption"] >= 4


def _check_stage3(batch, tokenizer):
    assert batch["target"].shape == (2, 3, TARGET, TARGET) and batch["target"].dtype == torch.float32
    assert batch["target"].min() >= -1.0 and batch["target"].max() <= 1.0
    assert len(batch["source"]) == 2 and len(batch["prompt"]) == 2
    assert len(batch["entity_masks"]) == 2 and len(batch["entity_token_index"]) == 2
    for masks, index, names in zip(batch["entity_masks"], batch["entity_token_index"], batch["entity_names"],
                                   strict=True):
        assert masks.shape[1:] == (TARGET, TARGET) and masks.shape[0] == len(index) == len(names)
        assert all(isinstance(n, str) and n for n in names)
        assert set(masks.unique().tolist()) <= {0.0, 1.0}
        for positions in index:
            assert positions.dtype == torch.long


def test_stage3_captions(tmp_path, kosmos_tokenizer):
    for batch in _take(_loader(tmp_path, kosmos_tokenizer, "stage3", ["captions"]), 2):
        _check_prompt_tensors(batch, kosmos_tokenizer, 0)
        _check_stage3(batch, kosmos_tokenizer)
        assert all(m.shape[0] == 0 for m in batch["entity_masks"])
        assert batch["entity_token_index"] == [[], []]
        assert (batch["tokens"] != kosmos_tokenizer.EOS).all()  # no </s> in stages 2/3


def test_stage3_editing(tmp_path, kosmos_tokenizer):
    for batch in _take(_loader(tmp_path, kosmos_tokenizer, "stage3", ["editing"]), 3):
        _check_prompt_tensors(batch, kosmos_tokenizer, 1)
        _check_stage3(batch, kosmos_tokenizer)
        for prompt in batch["prompt"]:
            assert prompt.count("<i>") == 1 and "turn the" in prompt.split("<i>")[1]


def test_stage3_compositional_entities(tmp_path, kosmos_tokenizer):
    tok = kosmos_tokenizer
    seen_kept = seen_dropped = False
    for batch in _take(_loader(tmp_path, tok, "stage3", ["compositional"]), 6):
        _check_prompt_tensors(batch, tok, 2)
        _check_stage3(batch, tok)
        for row, index in enumerate(batch["entity_token_index"]):
            assert len(index) == 2  # both synthetic entities are placed
            for positions in index:
                slots = positions[batch["image_mask"][row, positions]]
                words = positions[~batch["image_mask"][row, positions]]
                assert len(slots) == 64 and (slots.diff() == 1).all()
                assert tok.symbol(int(batch["tokens"][row, slots[0] - 1])) == "<image>"
                if len(words):
                    seen_kept = True
                    assert int(words[-1]) == int(slots[0]) - 2  # the word ends right before <image>
                    word = tok.decode(batch["tokens"][row, words].tolist()).strip()
                    assert word in batch["prompt"][row]
                else:
                    seen_dropped = True
            # Masks of different entities differ (left vs right half in the synthetic data).
            masks = batch["entity_masks"][row]
            assert masks.sum() > 0 and not torch.equal(masks[0], masks[1])
    assert seen_kept and seen_dropped


def test_stage3_mixture_batches_are_single_source(tmp_path, kosmos_tokenizer):
    loader = _loader(tmp_path, kosmos_tokenizer, "stage3", ["captions", "editing", "compositional"])
    for batch in _take(loader, 8):
        _check_stage3(batch, kosmos_tokenizer)
        assert len(set(batch["source"])) == 1


def test_config_errors_name_the_problem(tmp_path, kosmos_tokenizer):
    with pytest.raises(DataConfigError, match="kind 'editing' is not read by stage2"):
        _loader(tmp_path, kosmos_tokenizer, "stage2", ["editing"])
    with pytest.raises(DataConfigError, match="no sources"):
        build_dataloader(
            "stage3", {"sources": []}, kosmos_tokenizer, image_size=IMAGE, target_size=TARGET, batch_size=1,
            rank=0, world_size=1, seed=0,
        )  # fmt: skip
