"""Offline loading of the frozen SD1.5 parts: diffusers folder, single-file CLIP text encoder, CLIP BPE vocabulary
from vocab.json/merges.txt or open_clip's .gz, the single-file U-Net/VAE config, and errors that say what to do."""

from __future__ import annotations

import gzip

import pytest
import torch
from safetensors.torch import save_file

from training.sd15 import (
    CLIP_PREFIX,
    SD15_ORIGINAL_CONFIG,
    clip_caption_filter,
    clip_ids,
    load_clip_tokenizer,
    load_sd15,
)
from training.tiny_assets import write_tiny_clip_tokenizer, write_tiny_sd15

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return write_tiny_sd15(tmp_path_factory.mktemp("sd15") / "sd15")


def test_diffusers_folder_parts_load_frozen_in_the_asked_dtype(sd15):
    parts = load_sd15(sd15, device=CPU, dtype=torch.bfloat16, text_encoder=True, unet=True, vae=True)
    for module in (parts.text_encoder, parts.unet, parts.vae):
        assert not module.training
        assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in module.parameters())
    assert parts.unet.config.cross_attention_dim == 768
    assert parts.noise_scheduler.config.num_train_timesteps == 1000
    assert parts.noise_scheduler.config.beta_schedule == "scaled_linear"
    ids = clip_ids(parts.tokenizer, ["a photo of a dog", "cat"], CPU)
    assert ids.shape == (2, 77)
    eot = parts.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert ids[1, 0] == parts.tokenizer.convert_tokens_to_ids("<|startoftext|>") and (ids[1, 3:] == eot).all()
    hidden = parts.text_encoder(ids).last_hidden_state
    assert hidden.shape == (2, 77, 768)


def test_single_file_clip_text_encoder_matches_the_folder_one(sd15, tmp_path):
    folder = load_sd15(sd15, device=CPU, dtype=torch.float32, text_encoder=True)
    # An SD1.5 single file stores the text encoder under cond_stage_model.transformer.text_model.*, beside U-Net keys.
    tensors = {CLIP_PREFIX + k: v.contiguous() for k, v in folder.text_encoder.state_dict().items()}
    tensors["model.diffusion_model.out.2.bias"] = torch.zeros(4)
    single = tmp_path / "sd15.safetensors"
    save_file(tensors, str(single))
    parts = load_sd15(single, device=CPU, dtype=torch.float32, text_encoder=True, tokenizer_path=sd15 / "tokenizer")
    ids = clip_ids(parts.tokenizer, ["a dog"], CPU)
    torch.testing.assert_close(parts.text_encoder(ids).last_hidden_state, folder.text_encoder(ids).last_hidden_state)
    with pytest.raises(ValueError, match="sd1_tokenizer"):
        load_sd15(single, device=CPU, dtype=torch.float32, text_encoder=True)


def test_clip_vocabulary_from_open_clip_bpe_gz(tmp_path):
    folder_tok = load_clip_tokenizer(write_tiny_clip_tokenizer(tmp_path / "tok", words=("dog",)))
    gz = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write("\"bpe_simple_vocab_16e6.txt#version: 0.2\nd o\ndo g</w>\n")
    gz_tok = load_clip_tokenizer(gz)
    text = "a dog"
    assert gz_tok.convert_ids_to_tokens(gz_tok(text).input_ids) == folder_tok.convert_ids_to_tokens(
        folder_tok(text).input_ids)
    assert "dog</w>" in gz_tok.convert_ids_to_tokens(gz_tok(text).input_ids)


def test_caption_filter_counts_clip_tokens(sd15):
    tok = load_clip_tokenizer(sd15 / "tokenizer")
    keep = clip_caption_filter(tok)
    assert keep("dog " * 75) and not keep("dog " * 76)
    import pickle

    assert pickle.loads(pickle.dumps(keep))("a dog")  # data-loader workers receive it pickled


def test_single_file_unet_and_vae_configs_are_sd15():
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    unet = create_unet_diffusers_config_from_ldm(SD15_ORIGINAL_CONFIG, {})
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 768
    assert unet["attention_head_dim"] == 8 and unet["layers_per_block"] == 2
    vae = create_vae_diffusers_config_from_ldm(SD15_ORIGINAL_CONFIG, {})
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["scaling_factor"] == 0.18215


def test_errors_name_the_path_and_the_expected_layout(tmp_path):
    with pytest.raises(ValueError, match=r"\[sd15\] path is empty"):
        load_sd15("", device=CPU, dtype=torch.float32, unet=True)
    with pytest.raises(FileNotFoundError, match="diffusers SD1.5 folder"):
        load_sd15(tmp_path / "missing", device=CPU, dtype=torch.float32, unet=True)
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="vae/"):
        load_sd15(tmp_path / "half", device=CPU, dtype=torch.float32, vae=True)
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        load_clip_tokenizer(tmp_path)
