"""The official-checkpoint converter: official-format fairseq files written here (the key tree of the official module names at
tiny dims, fp16 as released, with the extras real files carry) -> the pack's file, through the CLI entry point."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import re

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from kosmos_g_core.checkpoint import load_checkpoint, read_header
from kosmos_g_core.config import KosmosGConfig
from kosmos_g_core.convert import main
from kosmos_g_core.model import KosmosG

# ---------------------------------------------------------------------------------------------------------------------
# Official files, built from the reference's key tree (independently of the model's own state_dict)


def _linear(out: dict, name: str, o: int, i: int) -> None:
    out[f"{name}.weight"] = (o, i)
    out[f"{name}.bias"] = (o,)


def _ln(out: dict, name: str, d: int) -> None:
    out[f"{name}.weight"] = (d,)
    out[f"{name}.bias"] = (d,)


def _attn(out: dict, name: str, d: int, inner_ln: bool) -> None:
    for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
        _linear(out, f"{name}.{proj}", d, d)
    if inner_ln:
        _ln(out, f"{name}.inner_attn_ln", d)


def _ffn(out: dict, name: str, d: int, f: int) -> None:
    _linear(out, f"{name}.fc1", f, d)
    _linear(out, f"{name}.fc2", d, f)
    _ln(out, f"{name}.ffn_layernorm", f)


def _encoder_layer(out: dict, name: str, d: int, f: int) -> None:  # torchscale EncoderLayer (Sub-LN)
    _attn(out, f"{name}.self_attn", d, True)
    _ln(out, f"{name}.self_attn_layer_norm", d)
    _ffn(out, f"{name}.ffn", d, f)
    _ln(out, f"{name}.final_layer_norm", d)


def _decoder_layer(out: dict, name: str, d: int, f: int) -> None:  # torchscale DecoderLayer with cross-attention
    _encoder_layer(out, name, d, f)
    _attn(out, f"{name}.encoder_attn", d, False)
    _ln(out, f"{name}.encoder_attn_layer_norm", d)


def official_key_tree(cfg: KosmosGConfig) -> dict[str, tuple[int, ...]]:
    """key -> shape of the tensors the pack keeps, written from the official module names (not from the model)."""
    out: dict[str, tuple[int, ...]] = {}
    m, v, c = cfg.mllm, cfg.vision, cfg.connector
    p = "gpt_model.decoder."
    out[p + "embed_tokens.weight"] = (m.vocab_size, m.dim)
    for i in range(m.layers):
        _attn(out, f"{p}layers.{i}.self_attn", m.dim, True)
        _ln(out, f"{p}layers.{i}.self_attn_layer_norm", m.dim)
        _ffn(out, f"{p}layers.{i}.ffn", m.dim, m.ffn_dim)
        _ln(out, f"{p}layers.{i}.final_layer_norm", m.dim)
    _ln(out, p + "layer_norm", m.dim)
    p = "img_model.visual."
    out[p + "conv1.weight"] = (v.width, 3, v.patch_size, v.patch_size)
    out[p + "class_embedding"] = (v.width,)
    out[p + "positional_embedding"] = (v.num_positions, v.width)
    _ln(out, p + "ln_pre", v.width)
    for i in range(v.layers):
        b = f"{p}transformer.resblocks.{i}."
        _attn(out, b + "ts_attn", v.width, False)
        _ln(out, b + "ln_1", v.width)
        _linear(out, b + "mlp.c_fc", v.mlp_ratio * v.width, v.width)
        _linear(out, b + "mlp.c_proj", v.width, v.mlp_ratio * v.width)
        _ln(out, b + "ln_2", v.width)
    _ln(out, p + "ln_post", v.width)
    _linear(out, "img_connector.dense", m.dim, v.width)
    out["img_connector.latent_query"] = (c.num_queries, m.dim)
    _attn(out, "img_connector.x_attn", m.dim, False)
    a = cfg.aligner
    if a is not None:
        _linear(out, "aligner.encoder_proj.embed_tokens", a.dim, m.dim)
        out["aligner.encoder_proj.embed_positions.weight"] = (a.max_positions, a.dim)
        for i in range(a.encoder_layers):
            _encoder_layer(out, f"aligner.encoder_proj.layers.{i}", a.dim, a.ffn_dim)
        _ln(out, "aligner.encoder_proj.layer_norm", a.dim)
        out["aligner.encoder_query"] = (a.num_queries, a.dim)
        for i in range(a.decoder_layers):
            _decoder_layer(out, f"aligner.encoder.layers.{i}", a.dim, a.ffn_dim)
        _ln(out, "aligner.encoder.layer_norm", a.dim)
        if a.with_decoder:  # AlignerNet N (stage 2)
            out["aligner.decoder_query"] = (a.max_positions, a.dim)
            for i in range(a.decoder_layers):
                _decoder_layer(out, f"aligner.decoder.layers.{i}", a.dim, a.ffn_dim)
            _ln(out, "aligner.decoder.layer_norm", a.dim)
            out["aligner.decoder_proj.embed_positions.weight"] = (a.max_positions, a.dim)
            for i in range(a.encoder_layers):
                _encoder_layer(out, f"aligner.decoder_proj.layers.{i}", a.dim, a.ffn_dim)
            _ln(out, "aligner.decoder_proj.layer_norm", a.dim)
            _linear(out, "aligner.decoder_proj.output_projection", m.dim, a.dim)
    return out


def official_extras(cfg: KosmosGConfig, embed: torch.Tensor, stage2: bool) -> dict[str, torch.Tensor]:
    """What real official files hold besides the pack's tensors (all dropped by the converter)."""
    w = cfg.vision.width
    extras = {
        "gpt_model.decoder.embed_positions._float_tensor": torch.zeros(1, dtype=torch.float16),
        "gpt_model.decoder.self_attn_sope.scale": torch.rand(cfg.mllm.heads, dtype=torch.float16),
        "gpt_model.decoder.output_projection.weight": embed,  # tied: the same tensor, as fairseq saves it
        "diffusion_unet.unet.conv_in.weight": torch.randn(8, 4, 3, 3, dtype=torch.float16),
        "diffusion_unet.unet.down_blocks.0.attentions.0.proj_in.weight": torch.randn(8, 8, dtype=torch.float16),
        "vae.vae.encoder.conv_in.weight": torch.randn(8, 3, 3, 3, dtype=torch.float16),
        "vae.vae.decoder.conv_out.bias": torch.randn(3, dtype=torch.float16),
    }
    for i in range(cfg.vision.layers):  # the unused nn.MultiheadAttention copy of a demo-built model
        b = f"img_model.visual.transformer.resblocks.{i}.attn."
        extras[b + "in_proj_weight"] = torch.randn(3 * w, w, dtype=torch.float16)
        extras[b + "in_proj_bias"] = torch.randn(3 * w, dtype=torch.float16)
        extras[b + "out_proj.weight"] = torch.randn(w, w, dtype=torch.float16)
        extras[b + "out_proj.bias"] = torch.randn(w, dtype=torch.float16)
    if stage2:  # the frozen SD-1.5 CLIP text encoder inside the stage-2 Aligner (transformers 4.34 names)
        t = "aligner.clip_encoder.text_model."
        extras[t + "embeddings.token_embedding.weight"] = torch.randn(49408, 8, dtype=torch.float16)
        extras[t + "embeddings.position_embedding.weight"] = torch.randn(77, 8, dtype=torch.float16)
        extras[t + "encoder.layers.0.self_attn.q_proj.weight"] = torch.randn(8, 8, dtype=torch.float16)
        extras[t + "final_layer_norm.weight"] = torch.ones(8, dtype=torch.float16)
    return extras


TINY_STAGE2 = KosmosGConfig.tiny().with_decoder()


def official_weights(stage2: bool) -> dict[str, torch.Tensor]:
    """Random fp16 tensors for the pack's keys (stage 2 adds AlignerNet N), LayerNorms near 1 like trained ones.
    A fresh dict each call (tests edit it); the tensors are shared and never modified in place."""
    return dict(_official_weights(stage2))


@functools.cache
def _official_weights(stage2: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    cfg = TINY_STAGE2 if stage2 else KosmosGConfig.tiny()
    out = {}
    for key, shape in official_key_tree(cfg).items():
        t = torch.randn(shape, generator=gen) * 0.05
        if re.search(r"(ln_\w+|layer_?norm\w*|inner_attn_ln)\.weight$", key):
            t += 1.0
        out[key] = t.to(torch.float16)
    out["gpt_model.decoder.embed_tokens.weight"][1] = 0  # padding row, as nn.Embedding(padding_idx=1) keeps it
    return out


def write_official(path, weights: dict[str, torch.Tensor], stage2: bool, trainer: bool = False,
                   extra: dict | None = None) -> None:
    """`extra` adds top-level entries (a training config holding the MLLM's head count, say)."""
    cfg = TINY_STAGE2 if stage2 else KosmosGConfig.tiny()
    model = dict(weights)
    model.update(official_extras(cfg, weights["gpt_model.decoder.embed_tokens.weight"], stage2))
    state = {"model": model, **(extra or {})}
    if trainer:  # a full fairseq trainer checkpoint rather than a stripped one
        state.update({
            "args": argparse.Namespace(arch="kosmosg_xl"), "cfg": {"model": {"_name": "kosmosg_xl"}},
            "criterion": None, "task_state": {},
            "optimizer_history": [{"criterion_name": "KosmosGLoss", "optimizer_name": "MemoryEfficientFP16Optimizer",
                                   "lr_scheduler_state": {"best": None}, "num_updates": 300000}],
            "extra_state": {"train_iterator": {"epoch": 1}, "previous_training_time": 1.0},
            "last_optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.98)}]},
        })
    torch.save(state, path)


def tokenizer_args(tokenizer_dir) -> list[str]:
    return ["--spm", str(tokenizer_dir / "sentencepiece.bpe.model"), "--dict", str(tokenizer_dir / "dict.txt")]


def images() -> list[Image.Image]:
    gen = torch.Generator().manual_seed(1)
    pix = [(torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy() for h, w in ((40, 32), (30, 50))]
    return [Image.fromarray(p) for p in pix]


def reference_model(weights: dict[str, torch.Tensor], cfg: KosmosGConfig, tokenizer) -> KosmosG:
    with torch.device("meta"):
        model = KosmosG(cfg)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True, assign=True)
    model.tokenizer = tokenizer
    return model.eval()


def stored_dtypes(path) -> set[torch.dtype]:
    with safe_open(str(path), framework="pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys() if not k.startswith("tokenizer.")}


# ---------------------------------------------------------------------------------------------------------------------


def test_reference_key_tree_is_the_models_state_dict():
    """The model's key names and shapes are exactly the official ones, for both layouts."""
    for cfg in (KosmosGConfig.tiny(), TINY_STAGE2):
        with torch.device("meta"):
            model = KosmosG(cfg)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official_key_tree(cfg)


def test_final_checkpoint_converts_loads_strictly_and_encodes(tmp_path, tokenizer_dir, kosmos_tokenizer, caplog):
    weights = official_weights(stage2=False)
    source, out = tmp_path / "checkpoint_final.pt", tmp_path / "kosmos_g.safetensors"
    write_official(source, weights, stage2=False)
    with caplog.at_level(logging.INFO, logger="kosmos_g_core.convert"):
        assert main(["--official", str(source), *tokenizer_args(tokenizer_dir), "--out", str(out),
                     "--dtype", "fp32"]) == 0
    assert "detected config" in caplog.text and "AlignerNet M 1+1 layers x 768" in caplog.text
    # A stripped file holds no head count: each one is assumed as the official code does, and the log says so.
    for note in ("MLLM 2 heads (assumed: the file does not say; one per 64 channels",
                 "connector 2 heads (the MLLM's", "ViT 1 heads (assumed: one per 64 channels",
                 "AlignerNet 12 heads (assumed: the official AlignerNet's fixed 12"):
        assert note in caplog.text, note

    model = load_checkpoint(out)
    assert model.config == KosmosGConfig.tiny()
    assert model.tokenizer.spm_bytes == kosmos_tokenizer.spm_bytes
    assert model.tokenizer.dict_bytes == kosmos_tokenizer.dict_bytes
    state = model.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[k], v.float()) for k, v in weights.items())

    prompt_images = images()
    cond, uncond = model.encode(_prompt(prompt_images))
    assert cond.shape == (1, 77, 768) and uncond.shape == (1, 77, 768)
    expected = reference_model(weights, KosmosGConfig.tiny(), kosmos_tokenizer).encode(_prompt(prompt_images))
    torch.testing.assert_close(cond, expected.cond, rtol=0, atol=0)
    torch.testing.assert_close(uncond, expected.uncond, rtol=0, atol=0)


def test_full_trainer_checkpoint_converts(tmp_path, tokenizer_dir):
    """A fairseq trainer checkpoint (args, cfg, optimizer and meter state besides "model") converts like a stripped
    one: only "model" is used."""
    weights = official_weights(stage2=False)
    source, out = tmp_path / "checkpoint_last.pt", tmp_path / "kosmos_g.safetensors"
    write_official(source, weights, stage2=False, trainer=True)
    assert main(["--official", str(source), *tokenizer_args(tokenizer_dir), "--out", str(out)]) == 0
    state = load_checkpoint(out).state_dict()
    assert set(state) == set(weights) and all(torch.equal(state[k], v) for k, v in weights.items())


@pytest.mark.parametrize("holder", [
    {"cfg": {"model": {"_name": "kosmosg_xl", "decoder_attention_heads": 4}}},
    {"args": argparse.Namespace(arch="kosmosg_xl", decoder_attention_heads=4), "cfg": None},
], ids=["cfg", "legacy_args"])
def test_head_counts_from_the_file_and_the_options(tmp_path, tokenizer_dir, kosmos_tokenizer, caplog, holder):
    """The MLLM's head count comes from the file (the connector shares it, as in the official XConnector); the ViT's
    and AlignerNet's, which official files do not hold, from the options. The file converts to that model."""
    weights = official_weights(stage2=False)
    source, out = tmp_path / "checkpoint_last.pt", tmp_path / "kosmos_g.safetensors"
    write_official(source, weights, stage2=False, extra=holder)
    with caplog.at_level(logging.INFO, logger="kosmos_g_core.convert"):
        assert main(["--official", str(source), *tokenizer_args(tokenizer_dir), "--out", str(out), "--dtype", "fp32",
                     "--vision-heads", "4", "--aligner-heads", "8"]) == 0
    where = "cfg['model']['decoder_attention_heads']" if "args" not in holder else "args.decoder_attention_heads"
    assert f"MLLM 4 heads (read from the file's {where})" in caplog.text
    assert "ViT 4 heads (--vision-heads)" in caplog.text and "AlignerNet 8 heads (--aligner-heads)" in caplog.text

    tiny = KosmosGConfig.tiny()
    expected_config = dataclasses.replace(
        tiny, vision=dataclasses.replace(tiny.vision, heads=4), mllm=dataclasses.replace(tiny.mllm, heads=4),
        connector=dataclasses.replace(tiny.connector, heads=4), aligner=dataclasses.replace(tiny.aligner, heads=8))
    model = load_checkpoint(out)
    assert model.config == expected_config
    prompt_images = images()
    expected = reference_model(weights, expected_config, kosmos_tokenizer).encode(_prompt(prompt_images))
    torch.testing.assert_close(model.encode(_prompt(prompt_images)).cond, expected.cond, rtol=0, atol=0)


def test_mllm_heads_option_must_agree_with_the_file(tmp_path, tokenizer_dir, caplog):
    source = tmp_path / "checkpoint_last.pt"
    write_official(source, official_weights(stage2=False), stage2=False,
                   extra={"cfg": {"model": {"decoder_attention_heads": 4}}})
    with caplog.at_level(logging.ERROR, logger="kosmos_g_core.convert"):
        assert main(["--official", str(source), *tokenizer_args(tokenizer_dir), "--out", str(tmp_path / "o.sft"),
                     "--mllm-heads", "2"]) == 2
    assert "--mllm-heads 2 contradicts the file, whose cfg['model']['decoder_attention_heads'] is 4" in caplog.text


def test_head_count_that_does_not_divide_the_width_is_refused(tmp_path, tokenizer_dir, caplog):
    source = tmp_path / "checkpoint_final.pt"
    write_official(source, official_weights(stage2=False), stage2=False)
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog, "--aligner-heads", "7")
    assert "AlignerNet: 7 attention heads do not divide its width 768" in text and "--aligner-heads" in text


def _prompt(prompt_images):
    from kosmos_g_core.prompt import InterleavedPrompt

    return InterleavedPrompt.from_text("<i> wearing <i>", images=prompt_images)


@pytest.mark.parametrize(("flag", "expected"), [([], torch.float16), (["--dtype", "bf16"], torch.bfloat16)])
def test_dtype_choice(tmp_path, tokenizer_dir, flag, expected):
    weights = official_weights(stage2=False)
    source, out = tmp_path / "checkpoint_final.pt", tmp_path / "out.safetensors"
    write_official(source, weights, stage2=False)
    assert main(["--official", str(source), *tokenizer_args(tokenizer_dir), "--out", str(out), *flag]) == 0
    assert stored_dtypes(out) == {expected}
    model = load_checkpoint(out)
    assert model.dtype == expected
    key = "img_connector.latent_query"
    assert torch.equal(model.state_dict()[key], weights[key].to(expected))


@pytest.mark.parametrize("keep", [False, True], ids=["drop_N", "keep_N"])
def test_stage2_checkpoint_drops_or_keeps_aligner_decoder(tmp_path, tokenizer_dir, keep):
    weights = official_weights(stage2=True)
    source, out = tmp_path / "checkpoint_stage2.pt", tmp_path / "stage2.safetensors"
    write_official(source, weights, stage2=True)
    flag = ["--keep-aligner-decoder"] if keep else []
    assert main(["--official", str(source), *tokenizer_args(tokenizer_dir), "--out", str(out), *flag]) == 0

    config, metadata = read_header(out)
    assert config.aligner.with_decoder is keep
    assert metadata["converted_from"] == "official"
    with safe_open(str(out), framework="pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("aligner.clip_encoder.") for k in keys)
    assert any(k.startswith("aligner.decoder") for k in keys) is keep
    model = load_checkpoint(out)  # strict
    state = model.state_dict()
    kept = {k: v for k, v in weights.items() if keep or not k.startswith("aligner.decoder")}
    assert set(state) == set(kept)
    assert all(torch.equal(state[k], v) for k, v in kept.items())


# ---------------------------------------------------------------------------------------------------------------------
# Wrong files: each error names the file and what was expected, and nothing is written


def _convert_error(tmp_path, tokenizer_dir, source, caplog, *options: str) -> str:
    out = tmp_path / "never.safetensors"
    with caplog.at_level(logging.ERROR, logger="kosmos_g_core.convert"):
        assert main(["--official", str(source), *tokenizer_args(tokenizer_dir), "--out", str(out), *options]) == 2
    assert not out.exists()
    assert str(source) in caplog.text
    return caplog.text


def test_stable_diffusion_checkpoint_is_rejected(tmp_path, tokenizer_dir, caplog):
    source = tmp_path / "v1-5-pruned-emaonly.ckpt"
    torch.save({"state_dict": {
        "model.diffusion_model.input_blocks.0.0.weight": torch.randn(8, 4, 3, 3),
        "first_stage_model.encoder.conv_in.weight": torch.randn(8, 3, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(8),
    }, "global_step": 840000}, source)
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog)
    assert "not a KOSMOS-G checkpoint" in text and "model.diffusion_model." in text and "gpt_model.decoder." in text


def test_stable_diffusion_safetensors_is_rejected(tmp_path, tokenizer_dir, caplog):
    from safetensors.torch import save_file

    source = tmp_path / "sd15.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.randn(4, 8, 3, 3)}, str(source))
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog)
    assert "not a KOSMOS-G checkpoint" in text


def test_truncated_file_is_rejected(tmp_path, tokenizer_dir, caplog):
    source = tmp_path / "checkpoint_final.pt"
    write_official(source, official_weights(stage2=False), stage2=False)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog)
    assert "truncated" in text


def test_missing_tensor_is_named(tmp_path, tokenizer_dir, caplog):
    weights = official_weights(stage2=False)
    del weights["gpt_model.decoder.layers.1.ffn.fc2.weight"]
    source = tmp_path / "checkpoint_final.pt"
    write_official(source, weights, stage2=False)
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog)
    assert "missing" in text and "gpt_model.decoder.layers.1.ffn.fc2.weight" in text


def test_unknown_key_is_named(tmp_path, tokenizer_dir, caplog):
    weights = official_weights(stage2=False)
    weights["gpt_model.decoder.layers.0.self_attn.rotary.inv_freq"] = torch.ones(4, dtype=torch.float16)
    weights["text_connector.dense.weight"] = torch.ones(4, 4, dtype=torch.float16)
    source = tmp_path / "checkpoint_final.pt"
    write_official(source, weights, stage2=False)
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog)
    assert "text_connector.dense.weight" in text


def test_not_a_pickle_is_rejected(tmp_path, tokenizer_dir, caplog):
    source = tmp_path / "checkpoint_final.pt"
    source.write_text("<html>403 Forbidden: key based authentication is not permitted</html>")
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog)
    assert "not a torch.save file" in text or "not a PyTorch checkpoint" in text


def test_untied_output_projection_is_rejected(tmp_path, tokenizer_dir, caplog):
    weights = official_weights(stage2=False)
    source = tmp_path / "checkpoint_final.pt"
    write_official(source, weights, stage2=False)
    state = torch.load(source, weights_only=True)
    state["model"]["gpt_model.decoder.output_projection.weight"] = weights["gpt_model.decoder.embed_tokens.weight"] + 1
    torch.save(state, source)
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog)
    assert "output_projection.weight differs" in text


def test_code_running_pickle_is_refused_by_the_cli(tmp_path, tokenizer_dir, caplog):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    source = tmp_path / "checkpoint_final.pt"
    torch.save({"model": official_weights(stage2=False), "payload": Payload()}, source)
    text = _convert_error(tmp_path, tokenizer_dir, source, caplog)
    assert "Nothing in the file was executed" in text
    assert not marker.exists()


def test_existing_output_is_not_overwritten_unless_asked(tmp_path, tokenizer_dir, caplog):
    source, out = tmp_path / "checkpoint_final.pt", tmp_path / "out.safetensors"
    write_official(source, official_weights(stage2=False), stage2=False)
    out.write_bytes(b"keep me")
    args = ["--official", str(source), *tokenizer_args(tokenizer_dir), "--out", str(out)]
    with caplog.at_level(logging.ERROR, logger="kosmos_g_core.convert"):
        assert main(args) == 2
    assert out.read_bytes() == b"keep me" and "--overwrite" in caplog.text
    assert main([*args, "--overwrite"]) == 0
    assert read_header(out)[0] == KosmosGConfig.tiny()


def test_official_uses_the_shipped_tokenizer_unless_given_both_files(tmp_path, kosmos_tokenizer, capsys):
    """The .pt holds no tokenizer: the official one shipped with the core is the default; --spm without --dict (or
    the reverse) is refused."""
    source, out = tmp_path / "checkpoint_final.pt", tmp_path / "kosmos_g.safetensors"
    write_official(source, official_weights(stage2=False), stage2=False)
    assert main(["--official", str(source), "--out", str(out)]) == 0
    model = load_checkpoint(out)
    assert (model.tokenizer.spm_bytes, model.tokenizer.dict_bytes) == (kosmos_tokenizer.spm_bytes,
                                                                       kosmos_tokenizer.dict_bytes)
    with pytest.raises(SystemExit):
        main(["--official", str(source), "--spm", str(tmp_path / "x.model"), "--out", str(out)])
    assert "--spm and --dict go together" in capsys.readouterr().err
