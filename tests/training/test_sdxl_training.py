"""Training KOSMOS-G for SDXL, on a tiny random SDXL-shaped base (training/tiny_assets.write_tiny_sdxl): the base is
told from its folder, stage 2's targets are what diffusers' SDXL pipeline feeds its U-Net, both stages' losses are
the documented formulas, stage 3 gives the frozen SDXL U-Net the pooled vector and each target's size conditioning,
the frozen-output cache and the memory planner handle SDXL, and the trainer's own export is an SDXL KOSMOS-G file."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kosmos_g_core.prompt import InterleavedPrompt
from training.sd15 import SD15, SDXL, base_kind, load_sd15, sdxl_text_target, text_targets
from training.stages import STAGES
from training.tiny_assets import write_tiny_init, write_tiny_sdxl
from training.train_config import config_from_dict, load_config

CPU = torch.device("cpu")
CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
KINDS = ("captions", "compositional", "editing")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer_dir):
    from training.data.synthetic import write_synthetic_shards

    root = tmp_path_factory.mktemp("sdxl_assets")
    write_tiny_sdxl(root / "sdxl")
    for kind in KINDS:
        write_synthetic_shards(root / "shards" / kind, kind, 8)
    write_tiny_init(root / "mllm.safetensors", tokenizer_dir, aligner=False)  # as a stage-1 export
    write_tiny_init(root / "sdxl_m.safetensors", tokenizer_dir, preset="tiny_sdxl")  # as an SDXL stage-2 export
    write_tiny_init(root / "sd15_m.safetensors", tokenizer_dir)  # an SD1.5 AlignerNet
    return root


def make_cfg(root, stage: str, kinds, init: str = "mllm.safetensors", sd15=None, **model):
    return config_from_dict({
        "stage": stage,
        "run": {"out_dir": str(root / "runs" / stage), "max_steps": 10},
        "model": {"init": str(root / init), "activation_checkpointing": False, **model},
        "parallel": {"precision": "fp32"},
        "sd15": {"path": str(root / "sdxl"), "resolution": 16, **(sd15 or {})},
        "data": {"batch_size": 2, "num_workers": 0, "max_tokens": 512,
                 "sources": [{"kind": k, "shards": str(root / "shards" / k)} for k in kinds]},
    })


def first_batch(stage, cfg, model) -> dict:
    return next(iter(stage.build_dataloader(cfg, model, 0, 1)))




def moved_since(before: dict, model) -> set[str]:
    return {k for k, v in model.kosmos.state_dict().items() if not torch.equal(before[k], v)}


def snapshot(model) -> dict:
    return {k: v.detach().clone() for k, v in model.kosmos.state_dict().items()}


# -- the base ---------------------------------------------------------------------------------------------------------
def test_the_base_is_told_by_its_files_never_its_name(assets, tmp_path):
    from training.tiny_assets import write_tiny_sd15

    assert base_kind(assets / "sdxl") == SDXL
    sd15 = write_tiny_sd15(tmp_path / "stable-diffusion-xl-base-1.0")  # an SD1.5 folder under an SDXL name
    assert base_kind(sd15) == SD15
    # Either sign alone is enough: the U-Net's text_time embedding, or a second text encoder.
    only_unet = tmp_path / "only_unet"
    shutil.copytree(assets / "sdxl" / "unet", only_unet / "unet")
    assert base_kind(only_unet) == SDXL
    (sd15 / "text_encoder_2").mkdir()
    assert base_kind(sd15) == SDXL
    assert base_kind("") == SD15


def test_sdxl_folder_loads_both_text_encoders_frozen(assets):
    from training.sd15 import unet_pooled_dim

    parts = load_sd15(assets / "sdxl", device=CPU, dtype=torch.bfloat16, text_encoder=True, unet=True, vae=True)
    assert parts.is_sdxl
    assert type(parts.text_encoder).__name__ == "CLIPTextModel"
    assert type(parts.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    for module in (parts.text_encoder, parts.text_encoder_2, parts.unet, parts.vae):
        assert not module.training and all(not p.requires_grad and p.dtype == torch.bfloat16
                                           for p in module.parameters())
    assert parts.tokenizer_2.pad_token == "!" and parts.tokenizer.pad_token == "<|endoftext|>"
    assert parts.unet.config.cross_attention_dim == 2048 and unet_pooled_dim(parts.unet.config) == 1280
    assert parts.noise_scheduler.config.beta_schedule == "scaled_linear"  # SDXL's Euler config read into DDPM
    # SDXL's VAE overflows in fp16: it stays fp32 (SD1.5's follows the dtype, as always).
    fp16 = load_sd15(assets / "sdxl", device=CPU, dtype=torch.float16, vae=True)
    assert next(fp16.vae.parameters()).dtype == torch.float32


def test_sdxl_refusals_say_what_to_use(assets, tmp_path):
    from safetensors.torch import save_file

    single = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.ones(4),
               "model.diffusion_model.out.2.bias": torch.zeros(4)}, str(single))
    assert base_kind(single) == SDXL
    with pytest.raises(ValueError, match="single-file SDXL checkpoint.*diffusers folder.*text_encoder_2/"):
        load_sd15(single, device=CPU, dtype=torch.float32, unet=True)
    with pytest.raises(ValueError, match=r"\[sd15\] tokenizer .* brings both of its tokenizers"):
        load_sd15(assets / "sdxl", device=CPU, dtype=torch.float32, text_encoder=True,
                  tokenizer_path=assets / "sdxl" / "tokenizer")
    cfg = config_from_dict({"stage": "controlnet", "sd15": {"path": str(assets / "sdxl")},
                            "data": {"shards": "x", "batch_size": 1}})
    with pytest.raises(ValueError, match="SDXL base: the controlnet stage trains a ControlNet for SD1.5"):
        STAGES["controlnet"]().check_config(cfg)


def test_sdxl_targets_are_diffusers_encode_prompt(assets):
    """Stage 2's targets equal what diffusers' StableDiffusionXLPipeline feeds its U-Net: each encoder's penultimate
    hidden state concatenated (768 + 1280) and bigG's projected text_embeds, tokenizer_2 padding with its own "!"."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(str(assets / "sdxl"), local_files_only=True)
    captions = ["a photo of a dog on the beach", "cat"]
    context, _, pooled, _ = pipe.encode_prompt(captions, device=CPU, num_images_per_prompt=1,
                                               do_classifier_free_guidance=False)
    parts = load_sd15(assets / "sdxl", device=CPU, dtype=torch.float32, text_encoder=True)
    targets = text_targets(parts.text_encoder, parts.tokenizer, captions, CPU, parts.text_encoder_2, parts.tokenizer_2)
    assert targets["clip_target"].shape == (2, 77, 2048) and targets["clip_pooled"].shape == (2, 1280)
    assert torch.equal(targets["clip_target"], context) and torch.equal(targets["clip_pooled"], pooled)
    # The pin has teeth: the last (not penultimate) states, or one tokenizer for both, give other tensors.
    ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    last = torch.cat([parts.text_encoder(ids).last_hidden_state, parts.text_encoder_2(ids).last_hidden_state], -1)
    assert not torch.allclose(last, context)
    one_tokenizer, _ = sdxl_text_target(parts.text_encoder, parts.text_encoder_2, parts.tokenizer, parts.tokenizer,
                                        captions, CPU)
    assert not torch.allclose(one_tokenizer, context)


# -- stage 2 ----------------------------------------------------------------------------------------------------------
def test_stage2_builds_sdxl_heads_from_the_base_and_its_loss_is_the_formula(assets, train_on):
    cfg = make_cfg(assets, "stage2", ["captions"], pooled_weight=0.5)
    stage = STAGES["stage2"]()
    model = stage.build_model(cfg, CPU)
    aligner = model.kosmos.config.aligner
    # The init has no AlignerNet: created with SDXL's heads because the base is SDXL (tiny_sdxl for a tiny MLLM).
    assert aligner.is_sdxl and aligner.with_decoder and (aligner.dim, aligner.context_dim, aligner.pooled_dim) == (
        64, 2048, 1280)
    batch = first_batch(stage, cfg, model)

    model.eval()
    loss, metrics = model(batch)
    tokens = batch["tokens"]
    hidden = model.kosmos.mllm_forward(tokens)
    frozen = model.frozen
    context, pooled = sdxl_text_target(frozen["text_encoder"], frozen["text_encoder_2"], frozen["clip_tokenizer"],
                                       frozen["clip_tokenizer_2"], batch["captions"], CPU)
    z = model.kosmos.align(hidden, tokens)
    T = tokens.shape[1]
    expected = (((z - context) ** 2).mean() + 0.5 * ((model.kosmos.pooled(z) - pooled) ** 2).mean()
                + ((model.kosmos.aligner.reconstruct(z, T) - hidden) ** 2).mean() * 77 / T)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert set(metrics) == {"loss/mse", "loss/pooled", "loss/rec"}
    assert float(metrics["loss/pooled"]) == pytest.approx(
        float(((model.kosmos.pooled(z) - pooled) ** 2).mean().detach()), rel=1e-5)

    model.train()
    before = snapshot(model)
    losses = train_on(stage, model, batch, 5, 1e-3)
    assert losses[-1] < 0.8 * losses[0], losses
    moved = moved_since(before, model)
    assert moved and all(k.startswith("aligner.") for k in moved)
    for part in ("aligner.context_proj.", "aligner.pooled_head.", "aligner.decoder"):
        assert any(k.startswith(part) for k in moved), part


@pytest.mark.parametrize("stage_name, init, base, message", [
    ("stage2", "sd15_m.safetensors", "sdxl",
     r"outputs 768-wide conditioning but SDXL's two text encoders' concatenated output of \[sd15\] path .* is "
     r"2048-wide with a 1280-wide pooled vector: an SDXL base needs an AlignerNet made for SDXL"),
    ("stage3", "sdxl_m.safetensors", "sd15",
     r"outputs 2048-wide with a 1280-wide pooled vector conditioning but the U-Net's cross-attention of \[sd15\] "
     r"path .* is 768-wide: an SD1.5 base needs an AlignerNet made for SD1.5"),
])
def test_an_aligner_for_the_other_base_is_refused_before_any_step(assets, tmp_path, stage_name, init, base, message):
    from training.tiny_assets import write_tiny_sd15

    sd15 = {"path": str(write_tiny_sd15(tmp_path / "sd15"))} if base == "sd15" else None
    cfg = make_cfg(assets, stage_name, ["captions"], init=init, sd15=sd15)
    with pytest.raises(ValueError, match=message):
        STAGES[stage_name]().build_model(cfg, CPU)


def test_stage2_sdxl_cache_gives_the_uncached_targets_and_losses(assets):
    import itertools

    from training.build_cache import build_cache
    from training.data.frozen_cache import cache_path, read_identity

    plain = make_cfg(assets, "stage2", ["captions"])
    cached = make_cfg(assets, "stage2", ["captions"], sd15={"cache_outputs": True})
    assert build_cache(plain) == {"shards": 2, "shards_written": 2, "entries": 8}
    shard = sorted((assets / "shards" / "captions").glob("*.tar"))[0]
    identity = read_identity(cache_path(shard, "sdxl_text"))  # beside an SD1.5 cache's clip_text file, not over it
    assert identity.kind == "sdxl_text" and "hidden_states[-2]" in identity.transform
    stage = STAGES["stage2"]()
    model = stage.build_model(plain, CPU)
    frozen = model.frozen
    for a, b in zip(itertools.islice(iter(stage.build_dataloader(plain, model, 0, 1)), 3),
                    itertools.islice(iter(stage.build_dataloader(cached, model, 0, 1)), 3), strict=True):
        assert a["keys"] == b["keys"] and "clip_target" not in a
        expected = text_targets(frozen["text_encoder"], frozen["clip_tokenizer"], b["captions"], CPU,
                                frozen["text_encoder_2"], frozen["clip_tokenizer_2"])
        for name in ("clip_target", "clip_pooled"):  # computed in batches of 16 there, 2 here: float rounding only
            torch.testing.assert_close(b[name], expected[name], rtol=1e-5, atol=1e-5)
        losses = []
        for batch in (a, b):
            torch.manual_seed(0)
            loss, metrics = stage.loss(model, batch, 0)
            losses.append((float(loss.detach()), metrics["loss/pooled"]))
        assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)


# -- stage 3 ----------------------------------------------------------------------------------------------------------
def record_unet_inputs(unet, seen: dict):
    def record(module, args, kwargs):
        seen["context"] = kwargs["encoder_hidden_states"].detach()
        seen["added"] = {k: v.detach() for k, v in kwargs["added_cond_kwargs"].items()}

    return unet.register_forward_pre_hook(record, with_kwargs=True)


def test_stage3_gives_the_unet_the_pooled_vector_and_each_targets_size_and_crop(assets):
    """captions/editing targets are 48 x 40 (W x H): at 16 px the short side becomes 16, the long int(16 * 48 / 40)
    = 19, cropped from left round(1.5) = 2; compositional targets are 48 x 48, uncropped."""
    stage = STAGES["stage3"]()
    seen: dict = {}
    for kind, geometry in (("captions", [40, 48, 0, 2, 16, 16]), ("compositional", [48, 48, 0, 0, 16, 16])):
        cfg = make_cfg(assets, "stage3", [kind], init="sdxl_m.safetensors", cond_dropout=0.0)
        model = stage.build_model(cfg, CPU).eval()
        batch = first_batch(stage, cfg, model)
        assert batch["target_geometry"].tolist() == [geometry, geometry]
        hook = record_unet_inputs(model.frozen["unet"], seen)
        try:
            with torch.no_grad():
                model(batch)
        finally:
            hook.remove()
        assert seen["context"].shape == (2, 77, 2048)
        torch.testing.assert_close(seen["added"]["text_embeds"], model.kosmos.pooled(seen["context"]))
        assert seen["added"]["text_embeds"].shape == (2, 1280)
        assert seen["added"]["time_ids"].tolist() == [geometry, geometry]


def test_stage3_dropped_conditions_get_the_null_contexts_pooled_vector(assets):
    """The null condition's pooled vector is KosmosG.pooled of the null context, as the nodes make the negative."""
    cfg = make_cfg(assets, "stage3", ["captions"], init="sdxl_m.safetensors", cond_dropout=1.0)
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, CPU).eval()
    seen: dict = {}
    hook = record_unet_inputs(model.frozen["unet"], seen)
    try:
        with torch.no_grad():
            _, metrics = model(first_batch(stage, cfg, model))
    finally:
        hook.remove()
    null = model.kosmos.null_condition()
    assert metrics["cond/null_share"] == 1.0
    torch.testing.assert_close(seen["context"], null.expand(2, -1, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["added"]["text_embeds"], model.kosmos.pooled(null).expand(2, -1), rtol=1e-5,
                               atol=1e-5)


def test_stage3_loss_decreases_through_the_frozen_sdxl_unet_into_the_pooled_head(assets, train_on):
    cfg = make_cfg(assets, "stage3", ["compositional"], init="sdxl_m.safetensors", cond_dropout=0.0)
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, CPU)
    unet = model.frozen["unet"]
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    batch = first_batch(stage, cfg, model)
    before = snapshot(model)
    losses = train_on(stage, model, batch, 6, 1e-3)
    assert losses[-1] < losses[0], losses
    moved = moved_since(before, model)
    for prefix in ("gpt_model.decoder.layers.", "img_connector.", "aligner.encoder", "aligner.context_proj.",
                   "aligner.pooled_head.", "img_model.visual.ln_post."):
        assert any(k.startswith(prefix) for k in moved), prefix
    assert all(torch.equal(unet_before[k], v) for k, v in unet.state_dict().items())


def test_stage3_grounding_supervision_runs_on_the_sdxl_unet(assets):
    """[semantic] grounding hooks the U-Net's cross-attention layers: SDXL's (over the 2048-wide context) work too."""
    cfg = make_cfg(assets, "stage3", ["compositional"], init="sdxl_m.safetensors")
    cfg = replace(cfg, semantic={"grounding_weight": 0.1, "grounding_sizes": []})
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, CPU)
    torch.manual_seed(0)
    loss, metrics = stage.loss(model, first_batch(stage, cfg, model), 0)
    loss.backward()
    assert metrics["loss/semantic/grounding"] > 0
    assert float(loss.detach()) == pytest.approx(metrics["loss/diffusion"] + metrics["loss/semantic/grounding"],
                                                 rel=1e-5)


def test_stage3_sdxl_samples_render(assets, tmp_path):
    cfg = make_cfg(assets, "stage3", ["captions"], init="sdxl_m.safetensors")
    cfg = replace(cfg, run=replace(cfg.run, out_dir=str(tmp_path)),
                  sample=replace(cfg.sample, every=1, prompts=("a photo of a dog", "a cat"), steps=2))
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, CPU)
    seen: dict = {}
    hook = record_unet_inputs(model.frozen["unet"], seen)

    class Writer:
        def images(self, tag, images, step):
            self.got = (tag, tuple(images.shape), float(images.min()), float(images.max()))

    writer = Writer()
    try:
        stage.sample(model, 1, writer, cfg)
    finally:
        hook.remove()
    tag, shape, lo, hi = writer.got
    assert tag == "samples" and shape == (2, 3, 16, 16) and 0.0 <= lo <= hi <= 1.0
    # [uncond; cond] with their pooled vectors and an uncropped 16 px square's sizes.
    cond, uncond, pooled, uncond_pooled = model.sample_conditions(
        [InterleavedPrompt.from_text(p) for p in cfg.sample.prompts])
    torch.testing.assert_close(seen["added"]["text_embeds"], torch.cat([uncond_pooled, pooled]))
    assert seen["added"]["time_ids"].tolist() == [[16, 16, 0, 0, 16, 16]] * 4
    assert (tmp_path / "samples" / "step_00000001_1.png").is_file()


# -- memory plan, configs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage_name, kinds", [("stage2", ["captions"]), ("stage3", ["compositional"])])
def test_the_planner_builds_the_trainers_sdxl_module_and_simulates_its_step(assets, stage_name, kinds):
    from training import memory_plan as mp

    init = "mllm.safetensors" if stage_name == "stage2" else "sdxl_m.safetensors"
    cfg = make_cfg(assets, stage_name, kinds, init=init)
    cfg = replace(cfg, parallel=replace(cfg.parallel, precision="bf16"))
    real = STAGES[stage_name]().build_model(cfg, CPU)
    plan = mp.build_plan_model(cfg)

    def shapes(module) -> dict:
        out = {f"kosmos.{k}": tuple(v.shape) for k, v in module.kosmos.state_dict().items()}
        for name, part in module.frozen.items():
            if isinstance(part, torch.nn.Module):
                out.update({f"{name}.{k}": (tuple(v.shape), v.dtype) for k, v in part.state_dict().items()})
        return out

    assert shapes(plan.module) == shapes(real)
    assert any(name.startswith("frozen SDXL") for name in plan.parts)
    batch = mp.synthetic_batch(plan, cfg, 2, mp.default_sample_shape(cfg))
    step = mp.simulate_step(plan, cfg, batch, checkpointing=True)
    assert step.peak > 0 and step.flops > 0


@pytest.mark.parametrize("name", ["stage2_sdxl", "stage3_sdxl", "tiny/stage2_sdxl", "tiny/stage3_sdxl"])
def test_shipped_sdxl_configs_parse(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert cfg.stage == name.split("/")[-1].removesuffix("_sdxl")
    assert cfg.data["sources"] and cfg.model.pooled_weight == 1.0
    assert cfg.sd15.path.endswith(("stable-diffusion-xl-base-1.0", "tiny-assets/sdxl"))
    if "/" not in name:
        assert cfg.model.aligner_preset == "sdxl" and cfg.optim.lr == 1e-3 and cfg.optim.warmup_steps == 375
        assert cfg.stage == "stage2" or cfg.sd15.resolution == 1024


def test_the_shipped_sdxl_configs_plan_sdxl_base_1_0_without_its_folder():
    """Without the SDXL folder here, the planner takes the KOSMOS-G of the config ([model] aligner_preset = "sdxl")
    and, because it is an SDXL one, SDXL base 1.0's architecture: the parameter counts of
    stabilityai/stable-diffusion-xl-base-1.0's parts (built on the meta device here; the plan builds them fake)."""
    from training import memory_plan as mp
    from training.sd15 import build_sd15_parts, sd15_architectures

    for name in ("stage2_sdxl", "stage3_sdxl"):
        cfg = load_config(CONFIGS / f"{name}.toml")
        config, where, sdxl = mp.plan_kosmos_config(cfg, STAGES[cfg.stage]())
        assert sdxl and config.condition_shape == (77, 2048) and config.pooled_dim == 1280, name
        assert config.aligner.dim == 768 and config.aligner.with_decoder == (cfg.stage == "stage2")
        assert "aligner_preset 'sdxl'" in where and "not found here" in where
    architectures = sd15_architectures("models/stable-diffusion-xl-base-1.0", sdxl=True)
    assert architectures["base"] == SDXL
    with torch.device("meta"):
        parts = build_sd15_parts(architectures, torch.bfloat16, text_encoder=True, unet=True, vae=True)
    counts = {name: sum(p.numel() for p in getattr(parts, name).parameters())
              for name in ("text_encoder", "text_encoder_2", "unet", "vae")}
    assert counts == {"text_encoder": 123_060_480,       # CLIP ViT-L/14 text tower
                      "text_encoder_2": 694_659_840,     # OpenCLIP ViT-bigG/14 text tower + projection
                      "unet": 2_567_463_684, "vae": 83_653_863}


# -- the trainer's own SDXL file --------------------------------------------------------------------------------------
def test_the_trainer_makes_an_sdxl_kosmos_g_file_that_encodes_sdxl_conditioning(assets, tmp_path, monkeypatch):
    """`python -m training.train --config training/configs/tiny/stage2_sdxl.toml`, then `.../stage3_sdxl.toml`, as
    the docs say (from a folder holding runs/tiny-assets and a stage-1 export): the stage-3 export loads in the core
    as an SDXL KOSMOS-G file and encodes (B, 77, 2048) contexts with (B, 1280) pooled vectors."""
    from kosmos_g_core.checkpoint import load_checkpoint, read_header
    from training.train import main

    tiny = tmp_path / "runs" / "tiny-assets"
    tiny.mkdir(parents=True)
    (tiny / "sdxl").symlink_to(assets / "sdxl", target_is_directory=True)
    (tiny / "shards").mkdir()
    for kind in KINDS:  # the shard folders without any cache built beside them by other tests
        shutil.copytree(assets / "shards" / kind, tiny / "shards" / kind, ignore=shutil.ignore_patterns(".*"))
    (tmp_path / "runs" / "tiny" / "stage1").mkdir(parents=True)
    shutil.copyfile(assets / "mllm.safetensors", tmp_path / "runs" / "tiny" / "stage1" / "export.safetensors")
    monkeypatch.chdir(tmp_path)
    quick = ["run.max_steps=3", "checkpoint.every=0", "log.tensorboard=false", "log.progress=\"lines\""]
    main(["--config", str(CONFIGS / "tiny" / "stage2_sdxl.toml"), *quick])
    main(["--config", str(CONFIGS / "tiny" / "stage3_sdxl.toml"), *quick, "sample.every=3"])

    path = tmp_path / "runs" / "tiny" / "stage3_sdxl" / "export.safetensors"
    _, metadata = read_header(path)
    assert metadata["trained_stage"] == "stage3"
    model = load_checkpoint(path, dtype=torch.float32)
    config = model.config
    assert config.aligner.is_sdxl and not config.aligner.with_decoder
    assert config.condition_shape == (77, 2048) and config.pooled_dim == 1280
    cond, uncond = model.encode(["a photo of a dog", "a cat"])
    assert cond.shape == uncond.shape == (2, 77, 2048)
    with torch.inference_mode():
        assert model.pooled(cond).shape == model.pooled(uncond).shape == (2, 1280)
    assert (tmp_path / "runs" / "tiny" / "stage3_sdxl" / "samples" / "step_00000003_0.png").is_file()
    # Stage 3 started from stage 2's export and trained it: its M differs from stage 2's.
    stage2 = load_checkpoint(tmp_path / "runs" / "tiny" / "stage2_sdxl" / "export.safetensors", dtype=torch.float32)
    assert not torch.equal(stage2.aligner.pooled_head.proj.weight, model.aligner.pooled_head.proj.weight)
