"""The toy base model (SD1.5 classes and folder layout), its tokenizer, the TOML writer and the toy shards."""

import json

import pytest
import tomllib
import torch

from training.toy_world import toml_writer
from training.toy_world.base_model import BaseModelConfig, encode_text, load_text_side, train_base_model
from training.toy_world.clip_tokenizer import write_clip_tokenizer
from training.toy_world.scenes import vocabulary


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return train_base_model(tmp_path_factory.mktemp("base"), BaseModelConfig.test(), seed=0)


def test_base_model_folder_loads_like_sd15(base_dir):
    from training.evaluation.sampler import DiffusionSampler
    from training.sd15 import load_sd15

    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (base_dir / sub).is_dir()
    assert json.loads((base_dir / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    parts = load_sd15(base_dir, device=torch.device("cpu"), dtype=torch.float32, text_encoder=True, unet=True,
                      vae=True)
    assert parts.unet.config.cross_attention_dim == 768
    tok, text = load_text_side(base_dir)
    emb = encode_text(tok, text, ["a toy on the beach", ""])
    assert emb.shape == (2, 77, 768)
    sampler = DiffusionSampler.from_folder(base_dir)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = sampler.sample(emb[:1], emb[1:], steps=2, guidance=5.0, resolution=32, generator=g())
    b = sampler.sample(emb[:1], emb[1:], steps=2, guidance=5.0, resolution=32, generator=g())
    assert a.shape == (1, 3, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_toy_words_are_single_clip_tokens(tmp_path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(vocabulary(), tmp_path))
    ids = tok("a cyan crossed toy in the snow").input_ids
    assert len(ids) == 2 + 7
    assert tok.convert_ids_to_tokens(ids[1:3]) == ["a</w>", "cyan</w>"]


def test_toml_writer_round_trips():
    table = {"stage": "stage3", "run": {"max_steps": 5, "out_dir": "runs/x \"y\""},
             "data": {"batch_size": 2, "sources": [{"kind": "captions", "shards": "a", "weight": 1.5}]},
             "sample": {"prompts": ["a", "b"], "ok": True}}
    assert tomllib.loads(toml_writer.dumps(table)) == table


def test_toy_shards_feed_the_stage3_loader(tmp_path):
    from kosmos_g_core.tokenizer import KosmosTokenizer
    from training.data.loader import build_dataloader
    from training.toy_world.shards import write_compositional_shards, write_kosmos_tokenizer

    write_compositional_shards(tmp_path / "comp", 8, seed=0)
    tok_dir = write_kosmos_tokenizer(tmp_path / "tok")
    tok = KosmosTokenizer.from_files(tok_dir / "sentencepiece.bpe.model", tok_dir / "dict.txt")
    loader = build_dataloader("stage3", {"batch_size": 4, "num_workers": 0, "sources": [
        {"kind": "compositional", "shards": str(tmp_path / "comp")}]}, tok, image_size=28, target_size=32,
        batch_size=4, rank=0, world_size=1, seed=0)
    batch = next(iter(loader))
    assert batch["target"].shape == (4, 3, 32, 32)
    assert batch["pixels"].shape == (4, 3, 28, 28)  # one entity image per sample
    assert int(batch["image_mask"].sum()) == 4 * 64
