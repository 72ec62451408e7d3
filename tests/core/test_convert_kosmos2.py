"""Hugging Face Kosmos-2 folder -> MLLM-only pack checkpoint, checked against transformers' own Kosmos-2 model.

The folders are written here by transformers' `save_pretrained` from a tiny `Kosmos2Config` whose text vocabulary
(64100) is larger than KOSMOS-G's 64007, as the real one (65037) is, so the vocabulary cut is exercised.
"""

from __future__ import annotations

import logging
import shutil

import torch
import transformers
from PIL import Image

from kosmos_g_core.checkpoint import load_checkpoint, read_header
from kosmos_g_core.convert import main
from kosmos_g_core.kosmos2_checkpoint import hf_to_official_key
from kosmos_g_core.prompt import InterleavedPrompt

HF_VOCAB = 64100


def tiny_kosmos2_config():
    text = {"vocab_size": HF_VOCAB, "embed_dim": 128, "layers": 2, "ffn_dim": 256, "attention_heads": 2,
            "dropout": 0.0, "attention_dropout": 0.0}
    vision = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 1,
              "image_size": 28, "patch_size": 14}
    return transformers.Kosmos2Config(text_config=text, vision_config=vision, latent_query_num=64)


def _randomise(model: torch.nn.Module) -> None:
    """Random LayerNorms and biases too (HF initialises them to 1/0, which would hide a swapped key)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def write_folder(path, tokenizer_dir, cls_name="Kosmos2Model", **save_kwargs):
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(tiny_kosmos2_config()).eval()
    _randomise(model)
    model.save_pretrained(path, **save_kwargs)
    shutil.copy(tokenizer_dir / "sentencepiece.bpe.model", path / "sentencepiece.bpe.model")
    return model


def _images():
    gen = torch.Generator().manual_seed(3)
    return [Image.fromarray((torch.rand(36, 30, 3, generator=gen) * 255).to(torch.uint8).numpy()) for _ in range(2)]


def test_kosmos2_mllm_matches_transformers(tmp_path, tokenizer_dir, kosmos_tokenizer, caplog):
    folder, out = tmp_path / "kosmos-2-tiny", tmp_path / "kosmos2_mllm.safetensors"
    hf = write_folder(folder, tokenizer_dir)
    assert not (folder / "dict.txt").exists()
    with caplog.at_level(logging.INFO, logger="kosmos_g_core"):
        assert main(["--kosmos2", str(folder), "--out", str(out)]) == 0
    assert "no AlignerNet" in caplog.text

    model = load_checkpoint(out)
    assert model.aligner is None and model.config.mllm.vocab_size == 64007
    assert model.tokenizer.dict_bytes == kosmos_tokenizer.dict_bytes  # rebuilt dict.txt == the official one
    assert read_header(out)[1]["converted_from"] == "kosmos2"

    batch = model.collate([InterleavedPrompt.from_text("<i> wearing <i>", images=_images())])
    with torch.inference_mode():
        image_embeds = model.encode_images(batch.pixels)  # (2, 64, 128)
        hidden = model.mllm_forward(batch.tokens, image_embeds, batch.image_mask)
        ref = hf(pixel_values=batch.pixels, input_ids=batch.tokens,
                 image_embeds_position_mask=batch.image_mask.long(), attention_mask=torch.ones_like(batch.tokens))
    assert hidden.shape == (1, 134, 128)
    torch.testing.assert_close(image_embeds, ref.image_embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden, ref.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_sharded_folder_with_lm_head_converts_to_bf16(tmp_path, tokenizer_dir):
    folder, out = tmp_path / "kosmos-2-sharded", tmp_path / "kosmos2_bf16.safetensors"
    hf = write_folder(folder, tokenizer_dir, "Kosmos2ForConditionalGeneration", max_shard_size="5MB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert main(["--kosmos2", str(folder), "--out", str(out), "--dtype", "bf16",
                 "--dict", str(tokenizer_dir / "dict.txt")]) == 0
    state = load_checkpoint(out).state_dict()
    expected = {}
    for key, value in hf.state_dict().items():
        new = hf_to_official_key(key)
        if new is not None:
            expected[new] = value[:64007] if new == "gpt_model.decoder.embed_tokens.weight" else value
    assert set(state) == set(expected)
    assert all(state[k].dtype == torch.bfloat16 and torch.equal(state[k], v.to(torch.bfloat16))
               for k, v in expected.items())


def _error(tmp_path, folder, caplog) -> str:
    out = tmp_path / "never.safetensors"
    with caplog.at_level(logging.ERROR, logger="kosmos_g_core.convert"):
        assert main(["--kosmos2", str(folder), "--out", str(out)]) == 2
    assert not out.exists()
    return caplog.text


def test_folder_without_weights_is_rejected(tmp_path, tokenizer_dir, caplog):
    folder = tmp_path / "empty"
    folder.mkdir()
    shutil.copy(tokenizer_dir / "sentencepiece.bpe.model", folder)
    assert "no model.safetensors" in _error(tmp_path, folder, caplog)


def test_foreign_or_small_vocab_weights_are_rejected(tmp_path, tokenizer_dir, caplog):
    from safetensors.torch import save_file

    folder = tmp_path / "not-kosmos2"
    folder.mkdir()
    shutil.copy(tokenizer_dir / "sentencepiece.bpe.model", folder)
    save_file({"text_model.model.embed_tokens.weight": torch.zeros(1000, 8)}, str(folder / "model.safetensors"))
    assert "fewer than KOSMOS-G's 64007" in _error(tmp_path, folder, caplog)
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 8)}, str(folder / "model.safetensors"))
    assert "model.diffusion_model.out.2.weight" in _error(tmp_path, folder, caplog)


def test_missing_sentencepiece_model_is_named(tmp_path, tokenizer_dir, caplog):
    folder = tmp_path / "no-spm"
    write_folder(folder, tokenizer_dir)
    (folder / "sentencepiece.bpe.model").unlink()
    assert "sentencepiece.bpe.model" in _error(tmp_path, folder, caplog)


def test_truncated_weights_are_named(tmp_path, tokenizer_dir, caplog):
    folder = tmp_path / "truncated"
    write_folder(folder, tokenizer_dir)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    text = _error(tmp_path, folder, caplog)
    assert str(weights) in text and "truncated" in text
