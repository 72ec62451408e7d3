"""The toy base model (SD1.5 classes and folder layout; SDXL's for the SDXL-shaped one), its tokenizer, the TOML
writer and the toy shards."""

import json

import pytest
import tomllib
import torch

from training.tiny_assets import write_clip_tokenizer
from training.toy_world import toml_writer
from training.toy_world.base_model import (
    BaseModelConfig,
    encode_text,
    load_base_text,
    load_text_side,
    train_base_model,
)
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
    width = BaseModelConfig.test().context_dim  # 256, where SD1.5 has 768
    assert parts.unet.config.cross_attention_dim == width
    tok, text = load_text_side(base_dir)
    emb = encode_text(tok, text, ["a toy on the beach", ""])
    assert emb.shape == (2, 77, width)
    sampler = DiffusionSampler.from_folder(base_dir)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = sampler.sample(emb[:1], emb[1:], steps=2, guidance=5.0, resolution=32, generator=g())
    b = sampler.sample(emb[:1], emb[1:], steps=2, guidance=5.0, resolution=32, generator=g())
    assert a.shape == (1, 3, 32, 32) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1


def test_text_encoder_pretraining_makes_every_position_carry_the_caption(tmp_path):
    """The toy CLIP stand-in is pretrained (as CLIP is) so that its (77, C) output says what the caption says; a
    random one varies little between captions. Measured with the share of output variance that is caption-dependent
    on the padding positions, which a causal encoder can only fill with what it read before them."""
    import random
    from dataclasses import replace

    from transformers import CLIPTokenizer

    from training.toy_world.base_model import BaseText, build_components, pretrain_text_encoder

    tok = CLIPTokenizer.from_pretrained(write_clip_tokenizer(vocabulary(), tmp_path))
    cfg = BaseModelConfig.test()
    captions = ["a red round toy on the beach", "a cyan crossed toy in the snow", "a toy at night", "a toy in the sea"]

    def caption_share(text) -> float:
        """Variance between captions at the same position over the total variance around the grand mean."""
        with torch.no_grad():
            pads = encode_text(tok, text, captions)[:, 20:]  # (4, 57, C): padding positions only
        between = pads.var(dim=0, correction=0).mean()
        total = (pads - pads.mean(dim=(0, 1))).pow(2).mean()
        return float(between / total)

    torch.manual_seed(0)
    _, _, side = build_components(cfg, tok)
    assert isinstance(side, BaseText) and side.text_encoder_2 is None
    text = side.text_encoder
    before = caption_share(text)
    first = pretrain_text_encoder(side, replace(cfg, text_steps=1, text_batch=16), random.Random(0))
    last = pretrain_text_encoder(side, replace(cfg, text_steps=40, text_batch=16), random.Random(1))
    assert last < 0.5 * first
    assert not any(p.requires_grad for p in text.parameters())
    assert caption_share(text) > 2 * before


@pytest.fixture(scope="module")
def sdxl_base_dir(tmp_path_factory):
    return train_base_model(tmp_path_factory.mktemp("sdxl_base"), BaseModelConfig.test_sdxl(), seed=0)


def test_sdxl_shaped_base_loads_like_sdxl_and_encodes_as_sdxl(sdxl_base_dir):
    """The SDXL-shaped toy base is what the trainer and the sampler take for SDXL: two text encoders whose
    penultimate states concatenate into the U-Net's context, a pooled vector, a U-Net with SDXL's text_time
    embedding, tokenizer_2 padding with "!"; the evaluation's text side encodes exactly as stage 2's SDXL targets."""
    from training.evaluation.sampler import DiffusionSampler
    from training.sd15 import SDXL, base_kind, load_sd15, sdxl_text_target, unet_pooled_dim

    cfg = BaseModelConfig.test_sdxl()
    index = json.loads((sdxl_base_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and "text_encoder_2" in index
    assert base_kind(sdxl_base_dir) == SDXL
    parts = load_sd15(sdxl_base_dir, device=torch.device("cpu"), dtype=torch.float32, text_encoder=True, unet=True)
    assert parts.is_sdxl and parts.tokenizer_2.pad_token == "!"
    assert parts.unet.config.cross_attention_dim == sum(cfg.sdxl_text_widths) == cfg.context_dim
    assert unet_pooled_dim(parts.unet.config) == cfg.pooled_dim == parts.text_encoder_2.config.projection_dim
    text = load_base_text(sdxl_base_dir)
    captions = ["a red round toy on the beach", ""]
    context, pooled = text.encode(captions)
    assert context.shape == (2, 77, cfg.context_dim) and pooled.shape == (2, cfg.pooled_dim)
    want = sdxl_text_target(parts.text_encoder, parts.text_encoder_2, parts.tokenizer, parts.tokenizer_2, captions,
                            torch.device("cpu"))
    assert torch.equal(context, want[0]) and torch.equal(pooled, want[1])
    # the first encoder's states come first, as CLIP-L's 768 come before bigG's 1280 in SDXL's 2048
    first = text.text_encoder(text.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt")
                              .input_ids, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(context[..., : cfg.sdxl_text_widths[0]], first)
    sampler = DiffusionSampler.from_folder(sdxl_base_dir)
    image = sampler.sample(context[:1], context[1:], steps=2, guidance=5.0, resolution=32,
                           generator=torch.Generator().manual_seed(0), pooled=(pooled[:1], pooled[1:]))
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_sdxl_base_config_checks_its_widths():
    from dataclasses import replace

    with pytest.raises(ValueError, match="must add up to context_dim"):
        replace(BaseModelConfig.toy_sdxl(), sdxl_text_widths=(96, 96))
    with pytest.raises(ValueError, match="text_layers must be >= 2"):
        replace(BaseModelConfig.toy_sdxl(), text_layers=1)
    with pytest.raises(ValueError, match="expected 'sd15' or 'sdxl'"):
        BaseModelConfig(kind="sd3")
    assert BaseModelConfig.toy().pooled_dim is None and BaseModelConfig.toy_sdxl().pooled_dim == 160


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


def _first_batch(tmp_path, stage: str, kind: str, shards) -> dict:
    """The trainer's loader for `stage` over toy shards, with the toy KOSMOS-G tokenizer: its first batch of 4."""
    from kosmos_g_core.tokenizer import KosmosTokenizer
    from training.data.loader import build_dataloader
    from training.toy_world.shards import write_kosmos_tokenizer

    tok_dir = write_kosmos_tokenizer(tmp_path / "tok")
    tok = KosmosTokenizer.from_files(tok_dir / "sentencepiece.bpe.model", tok_dir / "dict.txt")
    loader = build_dataloader(stage, {"batch_size": 4, "num_workers": 0, "sources": [
        {"kind": kind, "shards": str(shards)}]}, tok, image_size=28, target_size=32,
        batch_size=4, rank=0, world_size=1, seed=0)
    return next(iter(loader))


@pytest.mark.parametrize("subjects", [1, 2])
def test_toy_shards_feed_the_stage3_loader(tmp_path, subjects):
    from training.toy_world.shards import write_compositional_shards

    write_compositional_shards(tmp_path / "comp", 8, seed=0, pair_prob=float(subjects == 2))
    batch = _first_batch(tmp_path, "stage3", "compositional", tmp_path / "comp")
    assert batch["target"].shape == (4, 3, 32, 32)
    assert batch["pixels"].shape == (4 * subjects, 3, 28, 28)  # one entity image per subject
    assert int(batch["image_mask"].sum()) == 4 * subjects * 64


def test_reference_shards_caption_the_subject_alone(tmp_path):
    """Stage 1's reference pictures: one subject, framed between 56 and 90 % of the side, half on white, captioned
    with its attribute words only, and readable by the stage-1 caption loader."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image

    from training.toy_world.scenes import COLOURS, SHAPES
    from training.toy_world.shards import write_reference_shards

    paths = write_reference_shards(tmp_path / "refs", 12, seed=0)
    with tarfile.open(paths[0]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    captions = [v.decode() for k, v in members.items() if k.endswith(".txt")]
    images = [Image.open(io.BytesIO(v)).convert("RGB") for k, v in members.items() if k.endswith(".jpg")]
    assert len(captions) == len(images) == 12
    words = {f"a {c} {s} toy" for c in COLOURS for s in SHAPES.values()}
    assert set(captions) <= words
    white = [np.all(np.asarray(im)[0, 0] > 240) for im in images]
    assert 0 < sum(white) < 12  # both styles occur
    batch = _first_batch(tmp_path, "stage1", "captions", tmp_path / "refs")
    assert batch["pixels"].shape == (4, 3, 28, 28)


def test_evaluation_reference_styles():
    from training.toy_world.evaluate import EvalSettings
    from training.toy_world.scenes import Subject

    subject = Subject("disc", "red")
    cut = EvalSettings(reference="cutout").reference_image(subject)
    crop = EvalSettings(reference="crop").reference_image(subject)
    assert cut.getpixel((0, 0)) == (255, 255, 255) and crop.getpixel((0, 0)) != (255, 255, 255)
    with pytest.raises(ValueError, match="cutout"):
        EvalSettings(reference="photo").reference_image(subject)


def test_shipped_base_model_is_a_small_fp16_sd15_folder_that_draws():
    """The demo's base model (training/toy_world/assets/base): fp16 weights, U-Net context as wide as the text
    encoder's output, and it samples an image from a caption."""
    from safetensors import safe_open

    from training.evaluation.sampler import DiffusionSampler
    from training.sd15 import load_sd15
    from training.toy_world.base_model import SHIPPED_BASE

    files = sorted(SHIPPED_BASE.rglob("*.safetensors"))
    assert len(files) == 3 and sum(f.stat().st_size for f in files) < 12e6
    for f in files:
        with safe_open(f, "pt") as weights:
            assert {weights.get_slice(k).get_dtype() for k in weights.keys()} == {"F16"}, f
    parts = load_sd15(SHIPPED_BASE, device=torch.device("cpu"), dtype=torch.float32, text_encoder=True, unet=True)
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size
    tok, text = load_text_side(SHIPPED_BASE)
    emb = encode_text(tok, text, ["a red round toy on the beach", ""])
    image = DiffusionSampler.from_folder(SHIPPED_BASE).sample(emb[:1], emb[1:], steps=2, guidance=5.0, resolution=32,
                                                              generator=torch.Generator().manual_seed(0))
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
