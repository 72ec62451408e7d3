"""The frozen-output cache of stages 2 and 3 (training/data/frozen_cache.py, python -m training.build_cache) with tiny
real SD1.5-shaped models: a cached run computes the same losses as an uncached one, the cached posterior is the
encoder's and is still sampled per step, every per-sample and per-step random choice is unchanged, and a cache built
for another setup, a missing file or a changed shard is refused with a message naming the file."""

from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import replace

import pytest
import torch

from training.build_cache import build_cache, main
from training.data.frozen_cache import CACHE_DIR, FrozenCacheError, cache_path, read_identity
from training.sd15 import clip_text_target, sample_posterior, vae_posterior
from training.stages import STAGES
from training.tiny_assets import write_tiny_init
from training.train_config import config_from_dict

STAGE3_KINDS = ["captions", "compositional", "editing"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer_dir):
    from training.data.synthetic import write_synthetic_shards
    from training.tiny_assets import write_tiny_sd15

    root = tmp_path_factory.mktemp("cache_assets")
    write_tiny_sd15(root / "sd15")
    for kind in STAGE3_KINDS:
        write_synthetic_shards(root / "shards" / kind, kind, 8)
    write_tiny_init(root / "init.safetensors", tokenizer_dir)
    return root


def make_cfg(root, stage: str, kinds: list[str], shards=None, **sd15):
    shards = shards or root / "shards"
    return config_from_dict({
        "stage": stage,
        "run": {"out_dir": str(root / "runs" / stage), "max_steps": 10},
        "model": {"init": str(root / "init.safetensors"), "activation_checkpointing": False},
        "parallel": {"precision": "fp32"},
        "sd15": {"path": str(root / "sd15"), "resolution": 16, **sd15},
        "data": {"batch_size": 2, "num_workers": 0, "max_tokens": 512,
                 "sources": [{"kind": k, "shards": str(shards / k)} for k in kinds]},
    })


@pytest.fixture(scope="module")
def built(assets):
    """The stage-2 and stage-3 caches of the shards, built once with the builder's defaults."""
    counts = {stage: build_cache(make_cfg(assets, stage, kinds))
              for stage, kinds in (("stage2", ["captions"]), ("stage3", STAGE3_KINDS))}
    return counts


def same(a, b) -> bool:
    """Equal values, tensors compared exactly, through lists."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def batches(stage, cfg, model, n):
    return list(itertools.islice(iter(stage.build_dataloader(cfg, model, 0, 1)), n))


def test_builder_writes_one_file_per_shard_and_skips_them_when_rebuilt(assets, built):
    # 8 captions in 2 shards (stage 2); 3 kinds x 2 shards of 4 samples (stage 3). The stage-3 captions source is the
    # stage-2 one: its shards get a second file of the other kind.
    assert built["stage2"] == {"shards": 2, "shards_written": 2, "entries": 8}
    assert built["stage3"] == {"shards": 6, "shards_written": 6, "entries": 24}
    shard = sorted((assets / "shards" / "captions").glob("*.tar"))[0]
    assert cache_path(shard, "clip_text") == shard.parent / CACHE_DIR / f"{shard.stem}.clip_text.safetensors"
    assert cache_path(shard, "vae_posterior").is_file()
    identity = read_identity(cache_path(shard, "vae_posterior"))
    assert (identity.kind, identity.resolution, identity.dtype, identity.precision) == ("vae_posterior", 16, "fp32",
                                                                                        "fp32")
    again = build_cache(make_cfg(assets, "stage3", STAGE3_KINDS))
    assert again == {"shards": 6, "shards_existing": 6}


def test_stage2_cached_targets_give_the_uncached_losses(assets, built):
    """(a) Same batches, same CLIP targets, and with the same seed the same loss, in train mode (the frozen MLLM's
    dropout draws are unchanged: only the CLIP forward, which draws nothing, is skipped)."""
    stage = STAGES["stage2"]()
    plain, cached = make_cfg(assets, "stage2", ["captions"]), make_cfg(assets, "stage2", ["captions"], cache_outputs=True)
    model = stage.build_model(plain, torch.device("cpu"))
    for a, b in zip(batches(stage, plain, model, 3), batches(stage, cached, model, 3), strict=True):
        assert a["keys"] == b["keys"] and torch.equal(a["tokens"], b["tokens"]) and "clip_target" not in a
        expected = clip_text_target(model.frozen["text_encoder"], model.frozen["clip_tokenizer"], b["captions"],
                                    torch.device("cpu"))
        assert b["clip_target"].shape == (2, 77, 768)
        torch.testing.assert_close(b["clip_target"], expected, rtol=0, atol=1e-6)
        losses = []
        for batch in (a, b):
            torch.manual_seed(0)
            loss, metrics = stage.loss(model, batch, 0)
            losses.append((float(loss.detach()), metrics["loss/mse"], metrics["loss/rec"]))
        assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-7)


def test_stage3_cached_posterior_is_the_encoders_and_gives_the_uncached_losses(assets, built):
    """(b) The cached mean and std are the VAE's for the batch's targets; the draw from them is diffusers'
    latent_dist.sample(); with the same seed (same eps, noise, timesteps, null draws) the loss is the same."""
    stage = STAGES["stage3"]()
    plain = make_cfg(assets, "stage3", STAGE3_KINDS)
    cached = make_cfg(assets, "stage3", STAGE3_KINDS, cache_outputs=True)
    model = stage.build_model(plain, torch.device("cpu"))
    vae = model.frozen["vae"]
    seen = set()
    for a, b in zip(batches(stage, plain, model, 10), batches(stage, cached, model, 10), strict=True):
        seen.update(b["source"])
        mean, std = vae_posterior(vae, b["target"])
        assert b["latent_mean"].shape == b["latent_std"].shape == mean.shape == (2, 4, 8, 8)
        torch.testing.assert_close(b["latent_mean"], mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(b["latent_std"], std, rtol=0, atol=1e-6)
        torch.manual_seed(3)
        reference = vae.encode(b["target"]).latent_dist.sample()
        torch.manual_seed(3)
        torch.testing.assert_close(sample_posterior(b["latent_mean"], b["latent_std"]), reference, rtol=0, atol=1e-6)
        losses = []
        for batch in (a, b):
            torch.manual_seed(0)
            loss, metrics = stage.loss(model, batch, 0)
            losses.append((float(loss.detach()), metrics["cond/null_share"]))
        assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert seen == {"captions0", "compositional1", "editing2"}  # every stage-3 source kind went through the cache


def test_per_sample_and_per_step_random_choices_are_unchanged(assets, built):
    """(d) The loader builds every sample as without a cache (entity-word drop, crop vs cut-out, input-caption drop:
    same tokens, pixels and prompts over two epochs), and the trainer still draws a fresh eps per step from the
    cached posterior: two steps on one batch give different latents, distributed as mean + std * N(0, 1)."""
    stage = STAGES["stage3"]()
    plain = make_cfg(assets, "stage3", STAGE3_KINDS)
    cached = make_cfg(assets, "stage3", STAGE3_KINDS, cache_outputs=True)
    model = stage.build_model(plain, torch.device("cpu")).eval()
    a, b = batches(stage, plain, model, 14), batches(stage, cached, model, 14)  # 28 samples > 24: a second epoch
    for x, y in zip(a, b, strict=True):
        assert set(y) - set(x) == {"latent_mean", "latent_std"}
        for key, value in x.items():
            assert same(value, y[key]), key
    prompts = {p for batch in b for p in batch["prompt"] if "<i>" in p}
    assert len(prompts) > 1

    scheduler = model.frozen["noise_scheduler"]
    add_noise, drawn = scheduler.add_noise, []
    scheduler.add_noise = lambda latents, noise, t: drawn.append(latents) or add_noise(latents, noise, t)
    batch = next(x for x in b if x["source"][0].startswith("compositional"))
    try:
        with torch.no_grad():
            for _ in range(40):
                model(batch)
    finally:
        del scheduler.add_noise
    sf = model.frozen["vae"].config.scaling_factor
    eps = torch.stack([(z / sf - batch["latent_mean"]) / batch["latent_std"] for z in drawn])  # (40, 2, 4, 8, 8)
    assert not torch.equal(drawn[0], drawn[1])
    assert abs(float(eps.mean())) < 0.05 and abs(float(eps.std()) - 1) < 0.05


def _message(excinfo) -> str:
    return " ".join(str(excinfo.value).split())


def test_a_cache_built_for_another_setup_is_refused_naming_the_file_and_what_differs(assets, built, tmp_path):
    """(c) Another resolution, VAE weights or precision / dtype: refused at start-up, before any step."""
    from training.tiny_assets import write_tiny_sd15

    stage = STAGES["stage3"]()
    kinds = ["compositional"]
    first = cache_path(sorted((assets / "shards" / "compositional").glob("*.tar"))[0], "vae_posterior")
    other_vae = write_tiny_sd15(tmp_path / "other_sd15", seed=1)
    cases = {
        "resolution: cache 16, this run 32": make_cfg(assets, "stage3", kinds, cache_outputs=True, resolution=32),
        "weights: cache": replace(make_cfg(assets, "stage3", kinds, cache_outputs=True),
                                  sd15=replace(make_cfg(assets, "stage3", kinds).sd15, path=str(other_vae),
                                               cache_outputs=True)),
        "dtype: cache 'fp32', this run 'bf16'; precision: cache 'fp32', this run 'bf16'": config_from_dict(
            {**make_cfg(assets, "stage3", kinds, cache_outputs=True).to_dict(), "parallel": {"precision": "bf16"}}),
    }
    for expected, cfg in cases.items():
        model = stage.build_model(cfg, torch.device("cpu"))
        with pytest.raises(FrozenCacheError) as error:
            stage.build_dataloader(cfg, model, 0, 1)
        text = _message(error)
        assert str(first) in text and expected in text and "python -m training.build_cache" in text, text

    # The builder does not silently overwrite a cache of another setup either.
    with pytest.raises(FrozenCacheError, match="--overwrite"):
        build_cache(make_cfg(assets, "stage3", kinds, resolution=32))


def test_a_missing_or_stale_cache_is_refused_naming_the_file_and_sample(assets, tmp_path):
    from training.data.synthetic import synthetic_sample
    from training.data.writer import ShardWriter

    shards = tmp_path / "shards"
    shutil.copytree(assets / "shards" / "captions", shards / "captions", ignore=shutil.ignore_patterns(CACHE_DIR))
    cfg = make_cfg(assets, "stage2", ["captions"], shards=shards, cache_outputs=True)
    stage = STAGES["stage2"]()
    model = stage.build_model(cfg, torch.device("cpu"))
    with pytest.raises(FrozenCacheError) as error:
        stage.build_dataloader(cfg, model, 0, 1)
    assert "2 of 2 shards have no clip_text cache file" in _message(error)
    assert str(shards / "captions" / CACHE_DIR / "captions-000000.clip_text.safetensors") in _message(error)

    build_cache(cfg)
    # The shards are rewritten after the cache was built: sample 0 has another caption now.
    with ShardWriter(shards / "captions", "captions", 4) as writer:
        for i in range(8):
            writer.write({**synthetic_sample("captions", i), "txt": "a new caption"} if i == 0 else
                         synthetic_sample("captions", i))
    loader = stage.build_dataloader(cfg, model, 0, 1)  # identity unchanged: start-up passes
    with pytest.raises(FrozenCacheError) as error:
        list(itertools.islice(iter(loader), 4))
    text = _message(error)
    assert "has no entry for sample 's000000'" in text and "captions-000000.clip_text.safetensors" in text
    assert "--overwrite" in text


def test_command_line_builds_and_reports(assets, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(assets / "shards" / "editing", shards / "editing", ignore=shutil.ignore_patterns(CACHE_DIR))
    config = tmp_path / "stage3.toml"
    config.write_text(f'''stage = "stage3"
[parallel]
precision = "fp32"
[sd15]
path = "{assets / 'sd15'}"
resolution = 16
[data]
batch_size = 2
[[data.sources]]
kind = "editing"
shards = "{shards / 'editing'}"
''')
    assert main(["--config", str(config), "--batch-size", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"shards": 2, "shards_written": 2,
                                                                            "entries": 8}
    assert main(["--config", str(config), "--overwrite", "sd15.resolution=32"]) == 0
    assert read_identity(cache_path(sorted((shards / "editing").glob("*.tar"))[0], "vae_posterior")).resolution == 32


def test_a_stage_without_frozen_outputs_refuses_the_switch(assets):
    from training.train import Trainer

    with pytest.raises(ValueError, match=r"\[sd15\] cache_outputs = true, but stage 'stage1' has no frozen outputs"):
        Trainer(make_cfg(assets, "stage1", ["captions"], cache_outputs=True))
