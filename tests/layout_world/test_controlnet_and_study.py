"""The ControlNet stage on a tiny layout-world base model, the ControlNet sampler and the study command (smoke)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.layout_world.base_model import TEST_CONFIG, train_layout_base
from training.layout_world.shards import write_layout_world_shards


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout_world")
    base = train_layout_base(root / "base", TEST_CONFIG)
    shards = write_layout_world_shards(root / "shards", 24, seed=0)
    return base, shards, root


def _config(world, out: Path, steps: int = 2, semantic: dict | None = None, extra: list[str] = ()):
    from training.toy_world import toml_writer
    from training.train_config import load_config

    base, shards, _ = world
    table = {
        "stage": "controlnet",
        "run": {"out_dir": str(out), "max_steps": steps, "device": "cpu"},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "parallel": {"precision": "fp32"},
        "checkpoint": {"every": 0, "export_dtype": "fp32"},
        "log": {"every": 1, "tensorboard": False, "progress": "lines"},
        "sd15": {"path": str(base)},
        "data": {"batch_size": 4, "shards": [str(p) for p in shards]},
    }
    if semantic:
        table["semantic"] = semantic
    return load_config(toml_writer.write(table, out.parent / f"{out.name}.toml"), list(extra))


def test_zero_initialised_controlnet_changes_nothing(world):
    """ControlNet's zero convolutions: before training, sampling with it equals sampling without it."""
    from training.evaluation.sampler import DiffusionSampler
    from training.stages.controlnet import controlnet_from_unet

    base, _, _ = world
    sampler = DiffusionSampler.from_folder(base, "ddim")
    net = controlnet_from_unet(sampler.unet, sampler.vae).eval()
    cond = torch.randn(2, 77, sampler.unet.config.cross_attention_dim)
    hint = torch.rand(2, 3, 32, 32)
    plain = sampler.sample(cond, cond[:1] * 0, 3, 3.0, 32, generator=torch.Generator().manual_seed(0))
    controlled = sampler.sample(cond, cond[:1] * 0, 3, 3.0, 32, generator=torch.Generator().manual_seed(0),
                                controlnet=net, hint=hint)
    assert torch.equal(plain, controlled)


def test_stage_trains_exports_and_loads_back(world):
    from training.evaluation.sampler import DiffusionSampler
    from training.stages.controlnet import controlnet_from_unet, load_controlnet
    from training.train import run

    base, _, root = world
    result = run(_config(world, root / "plain"))
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    net = load_controlnet(result.export_path)
    sampler = DiffusionSampler.from_folder(base, "ddim")
    fresh = controlnet_from_unet(sampler.unet, sampler.vae)
    # the file rebuilt the same architecture from its own metadata (x4 hint encoder for the x4 VAE) ...
    def public(config):
        return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))

    assert public(net.config) == public(fresh.config)
    assert list(net.config.conditioning_embedding_out_channels) == [16, 32, 96]
    # ... with trained weights: the zero convolutions moved
    assert any(float(p.detach().abs().sum()) > 0 for n, p in net.named_parameters() if n.startswith("controlnet_down_blocks"))


def test_segmentation_term_reaches_the_controlnet(world):
    from training.layout_world.segmenter import train_segmenter
    from training.stages.controlnet import ControlNetStage

    _, _, root = world
    segmenter = train_segmenter(root / "segmenter", steps=2, batch=4)
    cfg = _config(world, root / "supervised", semantic={"segmentation_weight": 1.0, "segmenter": str(segmenter),
                                                        "segmentation_max_timestep": 1000})
    stage = ControlNetStage()
    model = stage.build_model(cfg, torch.device("cpu"))
    batch = next(iter(stage.build_dataloader(cfg, model, 0, 1)))
    assert batch["pictures"].shape == batch["hints"].shape == (4, 3, 32, 32) and batch["labels"].shape == (4, 32, 32)
    loss, metrics = stage.loss(model, batch, 0)
    assert metrics["loss/semantic/segmentation"] > 0
    loss.backward()
    grads = [p.grad for n, p in model.controlnet.named_parameters() if n.startswith("controlnet_down_blocks")]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_config_errors_name_the_key(world):
    from training.typed_tables import ConfigTypeError

    _, _, root = world
    from training.stages.controlnet import ControlNetStage

    with pytest.raises(ConfigTypeError, match=r"\[data\] palette"):
        ControlNetStage().check_config(_config(world, root / "bad", extra=["data.palette=rainbow"]))
    with pytest.raises(ConfigTypeError, match=r"\[data\] shards is empty"):
        ControlNetStage().check_config(_config(world, root / "bad", extra=["data.shards=[]"]))


def test_study_smoke_writes_every_condition(world, tmp_path):
    from training.layout_world.evaluate import CONDITIONS
    from training.layout_world.study import LayoutStudyConfig, study

    base, _, _ = world
    summary = study(tmp_path / "study", (0,), LayoutStudyConfig.smoke(), base)
    assert set(summary["conditions"]) == {c.name for c in CONDITIONS}
    assert set(summary["planners"]) == {"true_layout", "rule_based", "learned", "learned_without_mentions"}
    assert summary["planners"]["true_layout"]["miou_vs_true_layout"]["mean"] == 1.0
    text = (tmp_path / "study" / "study.md").read_text()
    assert "learned_without_mentions_controlnet_supervised" in text and "python -m training.layout_world.study" in text
    assert (tmp_path / "study" / "seed_0" / "eval" / "grid.png").is_file()
