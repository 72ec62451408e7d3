"""Training-state checkpoints: resume equals an uninterrupted run, a crash mid-write leaves `latest` loadable,
rotation keeps the last k, and the export is the pack file the core loader reads."""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.checkpoint import CRASH_ENV, CheckpointManager
from training.tiny_assets import write_tiny_init
from training.train import Trainer, run
from training.train_config import config_from_dict


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer_dir):
    from training.data.synthetic import write_synthetic_shards
    from training.tiny_assets import write_tiny_clip_tokenizer

    root = tmp_path_factory.mktemp("ckpt_assets")
    for kind in ("captions", "interleaved"):
        write_synthetic_shards(root / "shards" / kind, kind, 12)
    write_tiny_init(root / "init.safetensors", tokenizer_dir)
    # Stage 2 needs only SD1.5's CLIP text encoder: a tiny one, without importing diffusers.
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = write_tiny_clip_tokenizer(root / "sd15" / "tokenizer")
    vocab = len(json.loads((tok / "vocab.json").read_text()))
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=768, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=12, max_position_embeddings=77)).save_pretrained(
        root / "sd15" / "text_encoder")
    return {"root": root, "tokenizer": tokenizer_dir}


def stage2_cfg(assets, out_dir: Path, **run_kw):
    root = assets["root"]
    return config_from_dict({
        "stage": "stage2",
        "run": {"out_dir": str(out_dir), "max_steps": 4, "seed": 3, **run_kw},
        "model": {"init": str(root / "init.safetensors"), "activation_checkpointing": False},
        "optim": {"warmup_steps": 1},
        "parallel": {"precision": "fp32"},
        "checkpoint": {"every": 0, "keep": 2, "resume": "latest", "export_dtype": "fp16"},
        "log": {"tensorboard": False, "every": 1, "progress": "lines"},
        "sd15": {"path": str(root / "sd15")},
        "data": {"batch_size": 2, "num_workers": 0, "sources": [{"kind": "captions", "shards": str(root / "shards" /
                                                                                                    "captions")}]},
    })


def test_resume_gives_the_same_losses_as_an_uninterrupted_run_and_exports_a_loadable_file(assets, tmp_path):
    whole = run(stage2_cfg(assets, tmp_path / "whole"))
    assert whole.start_step == 0 and whole.final_step == 4 and len(whole.losses) == 4

    first = run(stage2_cfg(assets, tmp_path / "split", stop_after=2))
    assert first.final_step == 2 and not first.export_path
    assert (tmp_path / "split" / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    second = run(stage2_cfg(assets, tmp_path / "split"))
    assert second.start_step == 2 and second.final_step == 4
    # Model, optimiser, lr schedule, RNG (dropout) and data position all continue exactly.
    assert first.losses == pytest.approx(whole.losses[:2], rel=1e-6)
    assert second.losses == pytest.approx(whole.losses[2:], rel=1e-6)

    from kosmos_g_core.checkpoint import load_checkpoint, read_header

    config, metadata = read_header(whole.export_path)
    assert config.aligner is not None and not config.aligner.with_decoder  # N is not exported
    assert metadata["trained_stage"] == "stage2"
    model = load_checkpoint(whole.export_path)
    assert model.dtype == torch.float16
    cond, uncond = model.to(torch.float32).encode("a photo of a dog")
    assert cond.shape == (1, 77, 768) and uncond.shape == (1, 77, 768) and torch.isfinite(cond).all()
    trained = Path(tmp_path / "whole" / "checkpoints" / "step_00000004" / "model.safetensors")
    from safetensors.torch import load_file

    state = load_file(str(trained))
    torch.testing.assert_close(model.aligner.encoder_query.float(), state["kosmos.aligner.encoder_query"],
                               rtol=1e-3, atol=1e-3)


def _train_with_crash_hook(cfg) -> None:
    os.environ[CRASH_ENV] = "2"
    run(cfg)
    os._exit(0)  # not reached when the hook fires


def test_a_crash_while_writing_a_checkpoint_leaves_latest_loadable(assets, tmp_path):
    out = tmp_path / "crash"
    overrides = ["stage=\"stage1\"", f"run.out_dir=\"{out}\"", "run.max_steps=3", "checkpoint.every=1",
                 "checkpoint.resume=\"latest\"", "log.tensorboard=false", "model.init=\"\"", "model.preset=\"tiny\"",
                 f"model.tokenizer=\"{assets['tokenizer']}\"", "model.activation_checkpointing=false",
                 "parallel.precision=\"fp32\"", "data.batch_size=1", "data.num_workers=0",
                 "data.max_tokens=256"]
    config = tmp_path / "stage1.toml"
    config.write_text(f'stage = "stage1"\n[[data.sources]]\nkind = "interleaved"\n'
                      f'shards = "{assets["root"] / "shards" / "interleaved"}"\n')
    from training.train_config import load_config

    cfg = load_config(config, overrides)
    # A forked child (libraries already imported) trains with the crash hook set and dies inside its 2nd save.
    child = multiprocessing.get_context("fork").Process(target=_train_with_crash_hook, args=(cfg,))
    child.start()
    child.join(timeout=300)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 17, child.exitcode
    ckpts = out / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step_00000001"
    assert (ckpts / ".tmp-step_00000002" / "model.safetensors").is_file()  # the write that was cut short
    assert not (ckpts / "step_00000002").exists()

    cfg = replace(cfg, run=replace(cfg.run, max_steps=2))
    trainer = Trainer(cfg)
    assert trainer.step_count == 1  # resumed from the last complete checkpoint
    assert not (ckpts / ".tmp-step_00000002").exists()  # stale partial write cleaned up
    result = trainer.run()
    assert result.final_step == 2 and Path(result.export_path).is_file()


class _Loader:
    def __init__(self):
        self.position = 0

    def state_dict(self):
        return {"position": self.position}


def _toy():
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    return model, optimizer, scheduler


def _step(model, optimizer, scheduler):
    model(torch.randn(2, 4)).pow(2).sum().backward()
    optimizer.step()
    optimizer.zero_grad()
    scheduler.step()


def test_rotation_latest_pointer_and_full_state_restore(tmp_path):
    torch.manual_seed(0)
    model, optimizer, scheduler = _toy()
    manager = CheckpointManager(tmp_path, keep=2, rank=0, world_size=1)
    loader = _Loader()
    for step in range(1, 5):
        _step(model, optimizer, scheduler)
        loader.position = step * 10
        manager.save(step, model, optimizer, scheduler, None, loader.state_dict())
    assert [p.name for p in manager.complete_checkpoints()] == ["step_00000003", "step_00000004"]
    assert manager.latest().name == "step_00000004"
    expected_next = torch.rand(3)  # the RNG right after the last save
    weights = model.weight.detach().clone()
    exp_avg = optimizer.state[model.weight]["exp_avg"].clone()

    model2, optimizer2, scheduler2 = _toy()
    torch.manual_seed(123)
    state = manager.load(manager.latest(), model2, optimizer2, scheduler2, None)
    assert state["step"] == 4 and state["loader"] == {"position": 40}
    assert torch.equal(model2.weight, weights)
    assert torch.equal(optimizer2.state[model2.weight]["exp_avg"], exp_avg)
    assert scheduler2.last_epoch == scheduler.last_epoch
    assert torch.equal(torch.rand(3), expected_next)

    # A pointer to something incomplete falls back to the newest complete checkpoint.
    (tmp_path / "step_00000004" / "complete.json").unlink()
    assert manager.latest().name == "step_00000003"
    (tmp_path / "latest").write_text("step_99999999\n")
    assert manager.latest().name == "step_00000003"
    with pytest.raises(FileNotFoundError, match="complete.json"):
        manager.resolve(str(tmp_path / "step_00000004"))
    assert manager.resolve("") is None


def test_resume_latest_without_checkpoints_starts_fresh(tmp_path):
    manager = CheckpointManager(tmp_path / "none", keep=1, rank=0, world_size=1)
    assert manager.resolve("latest") is None
