"""Each KOSMOS-G stage, in process on CPU with the tiny preset: a few optimiser steps on one fixed batch lower the
loss, only the paper's trainable parts change, and stage-specific rules hold (stage-2 loss formula, stage-3 null
conditioning and gradient through the frozen U-Net)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.optim import OptimConfig, build_optimizer
from training.stages import STAGES
from training.tiny_assets import write_tiny_init
from training.train_config import config_from_dict


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer_dir):
    from training.data.synthetic import write_synthetic_shards
    from training.tiny_assets import write_tiny_sd15

    root = tmp_path_factory.mktemp("stage_assets")
    write_tiny_sd15(root / "sd15")
    for kind in ("text", "captions", "interleaved", "compositional", "editing"):
        write_synthetic_shards(root / "shards" / kind, kind, 8)
    write_tiny_init(root / "init.safetensors", tokenizer_dir)
    return {"root": root, "tokenizer": tokenizer_dir}


def make_cfg(assets, stage: str, kinds: list[str], **model) -> object:
    root = assets["root"]
    raw = {
        "stage": stage,
        "run": {"out_dir": str(root / "runs" / stage), "max_steps": 10},
        "model": {"init": str(root / "init.safetensors"), "activation_checkpointing": False, **model},
        "parallel": {"precision": "fp32"},
        "sd15": {"path": str(root / "sd15"), "resolution": 16},
        "data": {"batch_size": 2, "num_workers": 0, "max_tokens": 512,
                 "sources": [{"kind": k, "shards": str(root / "shards" / k)} for k in kinds]},
    }
    return config_from_dict(raw)


def fixed_batch(stage, cfg, model) -> dict:
    return next(iter(stage.build_dataloader(cfg, model, 0, 1)))




def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.kosmos.state_dict().items()}


def changed(before: dict, model) -> set[str]:
    return {k for k, v in model.kosmos.state_dict().items() if not torch.equal(before[k], v)}


def test_stage1_next_token_loss_decreases_and_vision_stays_frozen_but_last_block(assets, train_on):
    cfg = make_cfg(assets, "stage1", ["interleaved"], init="", preset="tiny", tokenizer=str(assets["tokenizer"]))
    stage = STAGES["stage1"]()
    model = stage.build_model(cfg, torch.device("cpu"))
    batch = fixed_batch(stage, cfg, model)
    assert batch["pixels"].shape[0] > 0  # interleaved: images go through the vision tower
    before = snapshot(model)
    losses = train_on(stage, model, batch, 5, 1e-3)
    assert losses[-1] < losses[0] - 0.5, losses
    moved = changed(before, model)
    assert any(k.startswith("gpt_model.decoder.layers.") for k in moved)
    assert any(k.startswith("img_connector.") for k in moved)
    assert any(k.startswith("img_model.visual.transformer.resblocks.1.") for k in moved)  # last block
    assert not any(k.startswith("img_model.visual.transformer.resblocks.0.") for k in moved)
    assert not any(k.startswith("aligner.") for k in moved)


def test_stage1_loss_is_cross_entropy_on_loss_mask_positions_only(assets):
    cfg = make_cfg(assets, "stage1", ["interleaved"])
    stage = STAGES["stage1"]()
    model = stage.build_model(cfg, torch.device("cpu")).eval()
    batch = fixed_batch(stage, cfg, model)
    loss, _ = model(batch)
    embeds = model.kosmos.encode_images(batch["pixels"])
    _, logits = model.kosmos.mllm_forward(batch["tokens"], embeds, batch["image_mask"], return_logits=True)
    mask = batch["loss_mask"][:, :-1]
    expected = F.cross_entropy(logits[:, :-1][mask], batch["tokens"][:, 1:][mask])
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert not mask[batch["image_mask"][:, 1:]].any()  # image slots are never targets


def test_stage2_trains_only_the_aligner_with_the_reference_loss(assets, train_on):
    cfg = make_cfg(assets, "stage2", ["captions"])
    stage = STAGES["stage2"]()
    model = stage.build_model(cfg, torch.device("cpu"))
    assert model.kosmos.config.aligner.with_decoder
    batch = fixed_batch(stage, cfg, model)

    # The formula of the official `kosmos-g/unilm/models/aligner.py:56-66`, recomputed by hand (eval mode: no dropout).
    model.eval()
    loss, metrics = model(batch)
    tokens = batch["tokens"]
    hidden = model.kosmos.mllm_forward(tokens)
    from training.sd15 import clip_ids

    target = model.frozen["text_encoder"](clip_ids(model.frozen["clip_tokenizer"], batch["captions"],
                                                   torch.device("cpu"))).last_hidden_state
    z = model.kosmos.align(hidden, tokens)
    T = tokens.shape[1]
    expected = ((z - target) ** 2).mean() + ((model.kosmos.aligner.reconstruct(z, T) - hidden) ** 2).mean() * 77 / T
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    assert set(metrics) == {"loss/mse", "loss/rec"}

    model.train()
    before = snapshot(model)
    losses = train_on(stage, model, batch, 5, 1e-3)
    assert losses[-1] < 0.8 * losses[0], losses
    moved = changed(before, model)
    assert moved and all(k.startswith("aligner.") for k in moved)
    assert any(k.startswith("aligner.decoder") for k in moved)  # N trains too


def test_stage2_drops_captions_over_75_clip_tokens(assets):
    cfg = make_cfg(assets, "stage2", ["captions"])
    stage = STAGES["stage2"]()
    model = stage.build_model(cfg, torch.device("cpu"))
    keep = stage.caption_filter(model)
    assert keep("a photo of a dog")
    assert keep(" ".join(["dog"] * 75)) and not keep(" ".join(["dog"] * 76))


def test_stage3_diffusion_loss_decreases_through_the_frozen_unet(assets, train_on):
    cfg = make_cfg(assets, "stage3", ["compositional"], cond_dropout=0.0)
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, torch.device("cpu"))
    unet = model.frozen["unet"]
    assert not any(p.requires_grad for p in unet.parameters())
    assert model.kosmos.config.aligner is not None and not model.kosmos.config.aligner.with_decoder
    batch = fixed_batch(stage, cfg, model)
    assert batch["target"].shape[-1] == 16
    unet_before = {k: v.clone() for k, v in unet.state_dict().items()}
    before = snapshot(model)
    losses = train_on(stage, model, batch, 6, 1e-3)
    assert losses[-1] < losses[0], losses
    moved = changed(before, model)
    # Gradient reached the MLLM, connector, AlignerNet M and the last ViT block through the U-Net; nothing else.
    for prefix in ("gpt_model.decoder.layers.", "img_connector.", "aligner.encoder", "img_model.visual.ln_post."):
        assert any(k.startswith(prefix) for k in moved), prefix
    assert not any(k.startswith("img_model.visual.transformer.resblocks.0.") for k in moved)
    assert all(torch.equal(unet_before[k], v) for k, v in unet.state_dict().items())


def test_stage3_null_condition_replaces_dropped_samples(assets):
    cfg = make_cfg(assets, "stage3", ["captions"], cond_dropout=1.0)
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, torch.device("cpu")).eval()
    seen = {}
    unet = model.frozen["unet"]

    def record(module, args, kwargs):
        seen["ctx"] = kwargs["encoder_hidden_states"].detach()

    hook = unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _, metrics = model(fixed_batch(stage, cfg, model))
    finally:
        hook.remove()
    null = model.kosmos.null_condition()
    assert metrics["cond/null_share"] == 1.0
    torch.testing.assert_close(seen["ctx"], null.expand_as(seen["ctx"]), rtol=1e-5, atol=1e-5)


def test_stage3_loss_is_the_epsilon_mse_of_the_frozen_unet(assets):
    """loss = mean over samples of mean((eps_pred - eps)^2), eps the noise that DDPM's q(x_t | x_0) added at a
    uniform t: the official `diffusion_loss`. Pinned on the tensors the U-Net really saw, so another loss (L1, a
    scale, v-prediction, a per-pixel mean over an uneven batch) fails here."""
    cfg = make_cfg(assets, "stage3", ["compositional"], cond_dropout=0.0)
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, torch.device("cpu")).eval()
    scheduler, unet = model.frozen["noise_scheduler"], model.frozen["unet"]
    seen = {}
    add_noise = scheduler.add_noise

    def recording_add_noise(latents, noise, timesteps):
        seen.update(latents=latents, noise=noise, timesteps=timesteps)
        return add_noise(latents, noise, timesteps)

    scheduler.add_noise = recording_add_noise
    hook = unet.register_forward_hook(lambda m, args, kwargs, out: seen.update(inputs=args, pred=out.sample),
                                      with_kwargs=True)
    try:
        torch.manual_seed(0)
        loss, metrics = stage.loss(model, fixed_batch(stage, cfg, model), 0)
    finally:
        hook.remove()
        del scheduler.add_noise
    noise, latents, t = seen["noise"].double(), seen["latents"].double(), seen["timesteps"]
    alpha_bar = scheduler.alphas_cumprod.double()[t][:, None, None, None]
    noisy, t_in = seen["inputs"]
    torch.testing.assert_close(noisy.double(), alpha_bar.sqrt() * latents + (1 - alpha_bar).sqrt() * noise)
    assert torch.equal(t_in, t) and scheduler.config.prediction_type == "epsilon"
    expected = (seen["pred"].detach().double() - noise).pow(2).flatten(1).mean(1).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert metrics["loss/diffusion"] == pytest.approx(float(expected), rel=1e-6)


def test_stage3_nulls_one_condition_in_ten_per_sample(assets):
    """The default [model] cond_dropout nulls each sample's condition independently with p = 0.1 (the official
    10 % for classifier-free guidance), measured on 480 draws of the conditions the U-Net receives."""
    cfg = make_cfg(assets, "stage3", ["captions"])
    assert cfg.model.cond_dropout == 0.1
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, torch.device("cpu")).eval()
    null = model.kosmos.null_condition()
    batch = fixed_batch(stage, cfg, model)
    batch = {**batch, **{k: v.repeat(12, *([1] * (v.dim() - 1))) for k, v in batch.items()
                         if k in ("tokens", "image_mask", "target")}}  # 24 samples, no images in captions

    class Seen(Exception):
        pass

    def stop(module, args, kwargs):
        raise Seen(kwargs["encoder_hidden_states"].detach())

    hook = model.frozen["unet"].register_forward_pre_hook(stop, with_kwargs=True)
    dropped = []
    torch.manual_seed(0)
    try:
        for _ in range(20):
            with pytest.raises(Seen) as caught, torch.no_grad():
                model(batch)
            ctx = caught.value.args[0]
            dropped.append([torch.allclose(c, null[0], atol=1e-5) for c in ctx])
    finally:
        hook.remove()
    flat = [d for row in dropped for d in row]
    rate = sum(flat) / len(flat)
    assert len(flat) == 480 and 0.07 <= rate <= 0.13, rate     # 0.1 +- 2.2 standard errors
    assert any(0 < sum(row) < len(row) for row in dropped)     # drawn per sample, not per batch


def test_stage3_samples_render_images(assets, tmp_path):
    cfg = make_cfg(assets, "stage3", ["captions"])
    from dataclasses import replace

    cfg = replace(cfg, run=replace(cfg.run, out_dir=str(tmp_path)),
                  sample=replace(cfg.sample, every=1, prompts=("a photo of a dog",), steps=2, resolution=16))
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, torch.device("cpu"))

    class Writer:
        def images(self, tag, images, step):
            self.got = (tag, images.shape, float(images.min()), float(images.max()), step)

    writer = Writer()
    stage.sample(model, 3, writer, cfg)
    tag, shape, lo, hi, step = writer.got
    assert tag == "samples" and shape == (1, 3, 16, 16) and 0.0 <= lo <= hi <= 1.0 and step == 3
    assert (tmp_path / "samples" / "step_00000003_0.png").is_file()
    assert model.training  # sampling leaves train mode as it found it


def test_unknown_stage_and_registry():
    assert {"stage1", "stage2", "stage3"} <= set(STAGES)
    from training.train import build_stage

    with pytest.raises(ValueError, match="registered stages"):
        build_stage("stage9")


def test_stage3_adds_semantic_supervision_terms_when_a_weight_is_set(assets, monkeypatch):
    """The hook of training/stages/semantic_supervision.py: built with ([semantic], unet) only when a weight is non-zero, called after the
    U-Net forward with the documented keywords, its weighted terms added to the loss."""
    import sys
    import types
    from dataclasses import replace

    calls = {}

    class SemanticSupervision:
        def __init__(self, cfg, unet):
            calls["init"] = (cfg, unet)

        def attach_aligner(self, aligner):
            pass

        def reset(self):
            calls["reset"] = calls.get("reset", 0) + 1

        def losses(self, *, batch, noise_pred, noisy_latents, timesteps, noise_scheduler, vae):
            calls["shapes"] = (noise_pred.shape, noisy_latents.shape, timesteps.shape)
            calls["batch_keys"] = set(batch)
            return {"grounding": noise_pred.float().pow(2).mean() * 0 + 0.25}

    from training.stages.semantic_supervision import SemanticConfig

    fake = types.ModuleType("training.stages.semantic_supervision")
    fake.SemanticSupervision = SemanticSupervision
    fake.SemanticConfig = SemanticConfig  # the real table parser: only the supervision is replaced
    monkeypatch.setitem(sys.modules, "training.stages.semantic_supervision", fake)

    off = make_cfg(assets, "stage3", ["compositional"])
    off = replace(off, semantic={"grounding_weight": 0.0})
    STAGES["stage3"]().build_model(off, torch.device("cpu"))
    assert "init" not in calls  # all weights zero: not even imported

    cfg = replace(off, semantic={"grounding_weight": 0.5})
    stage = STAGES["stage3"]()
    model = stage.build_model(cfg, torch.device("cpu"))
    assert calls["init"][0] == {"grounding_weight": 0.5} and calls["init"][1] is model.frozen["unet"]
    batch = fixed_batch(stage, cfg, model)
    torch.manual_seed(0)
    loss, metrics = stage.loss(model, batch, 0)
    assert metrics["loss/grounding"] == pytest.approx(0.25)
    assert float(loss.detach()) == pytest.approx(metrics["loss/diffusion"] + 0.25, rel=1e-5)
    assert {"entity_masks", "entity_token_index", "entity_names", "cond_dropped"} <= calls["batch_keys"]
    assert calls["reset"] == 1  # records cleared before the forward
    assert calls["shapes"][0] == calls["shapes"][1] and calls["shapes"][2] == (2,)


def test_stage3_with_real_grounding_supervision_is_unchanged_by_activation_checkpointing(assets):
    """Checkpointed layers re-run in backward and would leave stale attention records for the next step."""
    from dataclasses import replace

    losses = {}
    for checkpointing in (True, False):
        cfg = make_cfg(assets, "stage3", ["compositional"], activation_checkpointing=checkpointing)
        cfg = replace(cfg, semantic={"grounding_weight": 0.1, "grounding_sizes": []})
        stage = STAGES["stage3"]()
        model = stage.build_model(cfg, torch.device("cpu"))
        if checkpointing:
            stage.set_activation_checkpointing(model, cfg, True)
        batch = fixed_batch(stage, cfg, model)
        optimizer = build_optimizer(stage.trainable_parameters(model), OptimConfig(lr=1e-3, warmup_steps=0))
        torch.manual_seed(0)
        run = []
        for _ in range(3):
            loss, metrics = stage.loss(model, batch, 0)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run += [float(loss.detach()), metrics["loss/semantic/grounding"]]
        losses[checkpointing] = run
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


@pytest.mark.parametrize("stage_name, kinds, part", [("stage2", ["captions"], "CLIP text encoder"),
                                                      ("stage3", ["compositional"], "U-Net.s cross-attention")])
def test_stages_refuse_an_aligner_narrower_than_the_sd15_context(assets, tmp_path, stage_name, kinds, part):
    """A KOSMOS-G whose AlignerNet outputs 256-wide conditioning against the 768-wide tiny SD1.5: a clear error
    naming both widths and the SD1.5 path, before any step (not a matmul shape error inside the U-Net)."""
    from dataclasses import replace

    from kosmos_g_core.checkpoint import load_checkpoint, save_checkpoint
    from kosmos_g_core.model import KosmosG

    tiny = load_checkpoint(assets["root"] / "init.safetensors", dtype=torch.float32)
    config = replace(tiny.config, aligner=replace(tiny.config.aligner, dim=256, heads=4))
    narrow = tmp_path / "narrow.safetensors"
    save_checkpoint(narrow, KosmosG(config, dtype=torch.float32).state_dict(), tiny.tokenizer, config=config)
    cfg = make_cfg(assets, stage_name, kinds, init=str(narrow))
    with pytest.raises(ValueError, match=rf"256-wide conditioning but the {part}.* is 768-wide") as error:
        STAGES[stage_name]().build_model(cfg, torch.device("cpu"))
    assert str(assets["root"] / "sd15") in str(error.value)
