"""The pack's single-file format: round trips, strictness, dtype handling and the messages of bad files."""

from __future__ import annotations

import dataclasses
import json
import logging
import struct

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from kosmos_g_core.checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint, write_safetensors
from kosmos_g_core.config import AlignerConfig, ConnectorConfig, KosmosGConfig, MLLMConfig, VisionConfig
from kosmos_g_core.model import KosmosG
from kosmos_g_core.prompt import InterleavedPrompt


@pytest.fixture(scope="module")
def tiny(kosmos_tokenizer):
    torch.manual_seed(0)
    model = KosmosG(KosmosGConfig.tiny()).eval()
    model.tokenizer = kosmos_tokenizer
    return model


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, tiny)
    return path


def _prompt():
    img = Image.fromarray((torch.rand(50, 40, 3) * 255).byte().numpy())
    return InterleavedPrompt.from_text("<i> wearing <i>", [img, img.rotate(90)])


def test_round_trip_is_exact_and_strict(tiny, tiny_file):
    loaded = load_checkpoint(tiny_file)
    assert loaded.config == tiny.config
    for (k, a), (k2, b) in zip(tiny.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.tokenizer.encode("a dog swimming underwater") == [10, 1133, 4569, 12888]
    prompt = _prompt()
    assert torch.equal(loaded.encode(prompt).cond, tiny.encode(prompt).cond)


def test_file_is_standard_safetensors_with_tokenizer_and_config(tiny_file, tokenizer_dir):
    with safe_open(tiny_file, framework="pt") as f:
        meta = f.metadata()
        spm = f.get_tensor("tokenizer.sentencepiece_model")
        keys = set(f.keys())
    assert meta["format"] == "kosmos_g" and json.loads(meta["config"])["aligner"]["dim"] == 768
    assert bytes(spm.numpy()) == (tokenizer_dir / "sentencepiece.bpe.model").read_bytes()
    assert "gpt_model.decoder.output_projection.weight" not in keys
    config, metadata = read_header(tiny_file)
    assert config == KosmosGConfig.tiny() and metadata["format_version"] == "2"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_file_loads_without_fp32(tiny, tmp_path, dtype):
    path = tmp_path / "half.safetensors"
    save_checkpoint(path, tiny, dtype=dtype)
    assert path.stat().st_size < 0.6 * sum(t.numel() * 4 for t in tiny.state_dict().values())
    model = load_checkpoint(path)
    assert {p.dtype for p in model.parameters()} == {dtype}
    as_fp32 = load_checkpoint(path, dtype=torch.float32)
    assert {p.dtype for p in as_fp32.parameters()} == {torch.float32}
    assert as_fp32.encode(_prompt()).cond.shape == (1, 77, 768)


def test_mllm_only_checkpoint_round_trips(kosmos_tokenizer, tmp_path):
    model = KosmosG(KosmosGConfig.tiny().without_aligner())
    path = tmp_path / "mllm.safetensors"
    save_checkpoint(path, model.state_dict(), kosmos_tokenizer)
    loaded = load_checkpoint(path)
    assert loaded.aligner is None and loaded.config.aligner is None


def _rewrite(src, dst, drop=(), rename=None, metadata=None):
    with safe_open(src, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k not in drop}
        meta = f.metadata() if metadata is None else metadata
    if rename:
        tensors = {rename.get(k, k): v for k, v in tensors.items()}
    write_safetensors(dst, tensors, meta)


def test_missing_tensor_is_named(tiny_file, tmp_path):
    bad = tmp_path / "missing.safetensors"
    _rewrite(tiny_file, bad, drop={"gpt_model.decoder.layers.1.ffn.fc2.bias"})
    with pytest.raises(CheckpointError, match=r"missing.*gpt_model\.decoder\.layers\.1\.ffn\.fc2\.bias") as e:
        load_checkpoint(bad)
    assert str(bad) in str(e.value)


def test_unexpected_tensor_is_named(tiny_file, tmp_path):
    bad = tmp_path / "extra.safetensors"
    _rewrite(tiny_file, bad, rename={"img_connector.dense.bias": "img_connector.dense.extra"})
    with pytest.raises(CheckpointError, match="unexpected.*img_connector.dense.extra"):
        load_checkpoint(bad)


def test_truncated_file(tiny_file, tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(bad)


def test_stable_diffusion_checkpoint_is_recognised(tmp_path):
    sd = tmp_path / "v1-5-pruned-emaonly.safetensors"
    write_safetensors(sd, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                           "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3)})
    with pytest.raises(CheckpointError, match="Stable Diffusion checkpoint"):
        load_checkpoint(sd)


@pytest.mark.parametrize("content,match", [
    (b"", "too short"),
    (b"\x80\x02}q\x00.", "PyTorch pickle"),
    (b"PK\x03\x04rest-of-a-zip", "PyTorch pickle"),
    (struct.pack("<Q", 10) + b"not json!!", "not JSON"),
    (struct.pack("<Q", 10**12), "bad header length"),
])
def test_files_that_are_not_safetensors(tmp_path, content, match):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_missing_tokenizer(tiny_file, tmp_path):
    bad = tmp_path / "notok.safetensors"
    _rewrite(tiny_file, bad, drop={"tokenizer.dict"})
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_checkpoint(bad)


# ---------------------------------------------------------------------------------------------------------------------
# The file keeps the whole architecture: head counts (which no tensor shape says) and every other hyper-parameter


def _unusual_config() -> KosmosGConfig:
    """Tiny, with head widths other than 64 in every attention and every non-shape field changed."""
    return KosmosGConfig(
        vision=VisionConfig(image_size=28, patch_size=14, width=64, layers=2, heads=4),  # head width 16
        mllm=MLLMConfig(dim=128, layers=2, heads=4, ffn_dim=256, max_positions=1024, dropout=0.05,
                        attention_dropout=0.02),  # head width 32
        connector=ConnectorConfig(num_queries=64, heads=8, attention_dropout=0.03),  # head width 16
        aligner=AlignerConfig(dim=768, heads=8, ffn_dim=256, encoder_layers=1, decoder_layers=1,
                              max_positions=512),  # head width 96, in AlignerNet's encoder and query decoder
    )


def test_every_hyper_parameter_round_trips_at_other_head_widths(kosmos_tokenizer, tmp_path):
    config = _unusual_config()
    torch.manual_seed(0)
    model = KosmosG(config).eval()
    model.tokenizer = kosmos_tokenizer
    path = tmp_path / "unusual.safetensors"
    assert save_checkpoint(path, model) == config
    assert read_header(path)[0] == config
    loaded = load_checkpoint(path)
    assert loaded.config == config
    prompt = _prompt()
    expected = model.encode(prompt, negative="blurry")
    got = loaded.encode(prompt, negative="blurry")
    assert torch.equal(got.cond, expected.cond) and torch.equal(got.uncond, expected.uncond)

    # The same weights with one head per 64 channels (what the file used to come back as) condition differently,
    # so the equality above does depend on the stored head counts.
    derived = dataclasses.replace(config, vision=dataclasses.replace(config.vision, heads=1),
                                  mllm=dataclasses.replace(config.mllm, heads=2),
                                  connector=dataclasses.replace(config.connector, heads=2),
                                  aligner=dataclasses.replace(config.aligner, heads=12))
    wrong = KosmosG(derived).eval()
    wrong.load_state_dict(model.state_dict())
    wrong.tokenizer = kosmos_tokenizer
    assert (wrong.encode(prompt).cond - expected.cond).abs().max() > 1e-3


def test_format_1_file_loads_with_the_heads_it_was_saved_with(tiny_file, tmp_path, caplog):
    """Files written before head counts were stored kept a config whose heads were one per 64 channels."""
    with safe_open(tiny_file, framework="pt") as f:
        meta = dict(f.metadata())
    meta["format_version"] = "1"
    old = tmp_path / "format1.safetensors"
    _rewrite(tiny_file, old, metadata=meta)
    with caplog.at_level(logging.INFO, logger="kosmos_g_core.checkpoint"):
        assert load_checkpoint(old).config == KosmosGConfig.tiny()
    assert "format-1 file" in caplog.text and "one per 64 channels" in caplog.text


def test_file_without_config_gets_assumed_heads_and_says_so(tiny_file, tmp_path, caplog):
    bare = tmp_path / "bare.safetensors"
    _rewrite(tiny_file, bare, metadata={"format": "kosmos_g"})
    with caplog.at_level(logging.INFO, logger="kosmos_g_core.checkpoint"):
        assert load_checkpoint(bare).config == KosmosGConfig.tiny()
    assert "head counts assumed at one per 64 channels (vision 1, MLLM 2, connector 2, AlignerNet 12)" in caplog.text


def test_stored_config_that_contradicts_the_tensors_is_refused(tiny_file, tmp_path):
    with safe_open(tiny_file, framework="pt") as f:
        meta = dict(f.metadata())
    config = json.loads(meta["config"])
    config["mllm"]["ffn_dim"] = 512
    meta["config"] = json.dumps(config)
    bad = tmp_path / "edited.safetensors"
    _rewrite(tiny_file, bad, metadata=meta)
    with pytest.raises(CheckpointError, match=r"edited\.safetensors: the config stored .*\(mllm\.ffn_dim is 512"):
        load_checkpoint(bad)


def test_saving_a_config_that_contradicts_the_tensors_is_refused(tiny, tmp_path):
    config = dataclasses.replace(tiny.config, connector=ConnectorConfig(num_queries=32, heads=2))
    with pytest.raises(ValueError, match="connector.num_queries is 32 in the config but 64 in the tensors"):
        save_checkpoint(tmp_path / "x.safetensors", tiny.state_dict(), tiny.tokenizer, config)


def test_head_counts_must_divide_the_width():
    with pytest.raises(ValueError, match="the MLLM: 3 attention heads do not divide its width 128"):
        MLLMConfig(dim=128, heads=3)
    with pytest.raises(ValueError, match="the image connector: 5 attention heads"):
        dataclasses.replace(KosmosGConfig.tiny(), connector=ConnectorConfig(heads=5))
