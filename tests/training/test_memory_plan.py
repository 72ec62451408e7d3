"""The memory plan (`python -m training.throughput --plan`): its fake-tensor simulation of a training step equals the
live bytes measured during a real CPU `Trainer.step` at tiny size, its formulas are the optimizer's real behaviour,
and the CLI prices settings against a GPU size."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

from training import memory_plan as mp
from training.tiny_assets import write_tiny_init
from training.train import Trainer
from training.train_config import config_from_dict


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer_dir):
    from training.data.synthetic import write_synthetic_shards
    from training.tiny_assets import write_tiny_sd15

    root = tmp_path_factory.mktemp("plan_assets")
    write_tiny_sd15(root / "sd15")
    for kind in ("captions", "compositional"):
        write_synthetic_shards(root / "shards" / kind, kind, 8)
    write_tiny_init(root / "init.safetensors", tokenizer_dir)
    return root


# stage -> (source kind, micro-batch, target resolution): sizes at which activations are a visible share of the step.
SIZES = {"stage2": ("captions", 8, 32), "stage3": ("compositional", 4, 64)}


def make_cfg(root, stage: str, *, checkpointing: bool = True, precision: str = "bf16", **extra):
    kind, batch, resolution = SIZES[stage]
    raw = {
        "stage": stage,
        "run": {"out_dir": str(root / "runs" / stage), "max_steps": 10},
        "model": {"init": str(root / "init.safetensors"), "activation_checkpointing": checkpointing},
        "parallel": {"precision": precision, **extra.get("parallel", {})},
        "sd15": {"path": str(root / "sd15"), "resolution": resolution, "gradient_checkpointing": checkpointing},
        "log": {"tensorboard": False},
        "checkpoint": {"every": 0},
        "data": {"batch_size": batch, "num_workers": 0, "max_tokens": 512,
                 "sources": [{"kind": kind, "shards": str(root / "shards" / kind)}]},
    }
    return config_from_dict(raw, source=f"{stage}.toml")


def measure_trainer_step(cfg) -> dict:
    """One real Trainer.step on CPU under LiveBytes: bytes of the weights, the peak above them until the optimizer
    step starts (forward + backward + clipping), the peak of the whole step, and the AdamW states it created."""
    trainer = Trainer(cfg)
    batch = next(iter(trainer.loader))
    trainer._batches = iter([batch])  # the loader's own work is host memory, not the step's
    module = trainer.model
    weights = [*module.parameters(), *module.buffers()]
    for m in module.frozen.values():
        if isinstance(m, torch.nn.Module):
            weights += [*m.parameters(), *m.buffers()]
    gc.collect()
    tracker = mp.LiveBytes()
    tracker.track_weights(weights)
    base = tracker.live
    seen = {}
    trainer.optimizer.register_step_pre_hook(lambda *_: seen.setdefault("forward_backward", tracker.peak) and None)
    with tracker:
        trainer.step()
    states = [t for s in trainer.optimizer.state.values() for t in s.values() if t.dim() > 0]
    trainable = [p.numel() for p in trainer.params]
    return {"batch": batch, "weights": base, "forward_backward": seen["forward_backward"] - base,
            "step": tracker.peak - base, "states": mp.tensor_bytes(states), "trainable": trainable}


def fake_batch(plan, batch: dict) -> dict:
    """The measured batch for the simulation: images as fake tensors of the same shapes, index tensors as they are."""
    return {k: plan.fake_mode.from_tensor(v) if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in batch.items()}


@pytest.mark.parametrize("stage", ["stage2", "stage3"])
def test_simulated_step_equals_the_measured_cpu_step(assets, stage):
    cfg = make_cfg(assets, stage)
    real = measure_trainer_step(cfg)
    plan = mp.build_plan_model(cfg)
    # A CPU run: CPU autocast policy and torch's CPU default AdamW (tensor by tensor), as the Trainer just ran.
    sim = mp.simulate_step(plan, cfg, fake_batch(plan, real["batch"]), checkpointing=True, optimizer="single",
                           policy="cpu")
    assert plan.weight_bytes == real["weights"]
    assert sim.peak == pytest.approx(real["forward_backward"], rel=0.01)
    assert max(sim.peak, sim.grad_bytes + sim.state_bytes + sim.optimizer_temporaries) == \
        pytest.approx(real["step"], rel=0.01)
    # The formulas the plan prices: fp32 gradients and two fp32 AdamW states per trainable element.
    assert sim.grad_bytes == 4 * sum(real["trainable"]) == 4 * sum(plan.trainable_numels)
    assert real["states"] == sim.state_bytes == mp.adamw_state_bytes(real["trainable"]) == 8 * sum(real["trainable"])


def test_checkpointing_shrinks_the_simulated_activations(assets):
    cfg = make_cfg(assets, "stage2")
    plan = mp.build_plan_model(cfg)
    batch = mp.synthetic_batch(plan, cfg, 32, mp.default_sample_shape(cfg))
    on = mp.simulate_step(plan, cfg, batch, checkpointing=True)
    off = mp.simulate_step(plan, cfg, batch, checkpointing=False)
    assert on.activations < 0.8 * off.activations
    assert on.flops > off.flops  # the recomputed forward is counted


def test_adamw_implementations_and_8bit_states(assets):
    cfg = make_cfg(assets, "stage2")
    plan = mp.build_plan_model(cfg)
    batch = mp.synthetic_batch(plan, cfg, 2, mp.default_sample_shape(cfg))
    foreach = mp.simulate_step(plan, cfg, batch, checkpointing=True, optimizer="foreach")
    fused = mp.simulate_step(plan, cfg, batch, checkpointing=True, optimizer="fused")
    trainable = 4 * sum(plan.trainable_numels)
    # foreach (torch's CUDA default) allocates one fp32 copy of the trainable tensors at the step; fused none.
    assert foreach.optimizer_temporaries == pytest.approx(trainable, rel=0.02)
    assert fused.optimizer_temporaries < 0.02 * trainable
    assert foreach.state_bytes == fused.state_bytes == mp.adamw_state_bytes(plan.trainable_numels)
    # bitsandbytes: uint8 states + fp32 absmax per 256 elements from 4096 elements up, fp32 states below.
    assert mp.adamw8bit_state_bytes([4096]) == 2 * (4096 + 4 * 16)
    assert mp.adamw8bit_state_bytes([5000]) == 2 * (5000 + 4 * 20)
    assert mp.adamw8bit_state_bytes([4095]) == 2 * 4 * 4095


def test_cuda_autocast_policy_runs_norms_in_fp32_only_inside():
    x = torch.randn(2, 8, 16)
    linear = torch.nn.Linear(16, 16)
    with mp.cuda_autocast_policy(), torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        assert h.dtype == torch.bfloat16
        assert F.layer_norm(h, (16,)).dtype == torch.float32
        assert F.group_norm(h.transpose(1, 2), 4).dtype == torch.float32
        assert F.softmax(h, -1).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU's own policy again once the block is left
        assert F.layer_norm(linear(x), (16,)).dtype == torch.bfloat16


def test_micro_batches_halve_the_effective_batch():
    assert mp.micro_batches(16) == [16, 8, 4, 2, 1]
    assert mp.micro_batches(56) == [56, 28, 14, 7, 1]
    assert mp.micro_batches(1) == [1]


def test_plan_cli_prices_settings_for_a_gpu_size(assets, capsys):
    from training.throughput import main

    cfg_path = assets / "plan_stage3.toml"
    cfg = make_cfg(assets, "stage3")
    cfg_path.write_text(f'''stage = "stage3"
[model]
init = "{assets / 'init.safetensors'}"
[parallel]
precision = "bf16"
[sd15]
path = "{assets / 'sd15'}"
resolution = 64
[data]
batch_size = 4
num_workers = 0
[[data.sources]]
kind = "compositional"
shards = "{assets / 'shards' / 'compositional'}"
''')
    common = ["--config", str(cfg_path), "--plan", "--micro-batches", "4", "--reserve-gib", "0",
              "--fragmentation", "0", "--peak-tflops", "100"]
    big = main([*common, "--gpu-memory", "4", "--gpus", "4"])
    out = capsys.readouterr().out
    assert "usable per GPU: 4.00 GiB" in out and "as configured" in out and "fastest setting the trainer has" in out
    assert all(r.fits for r in big.rows) and big.configured
    trainable = 4 * sum(big.model.trainable_numels)
    fsdp = [r for r in big.rows if r.strategy == "fsdp"]
    ddp = [r for r in big.rows if r.strategy == "ddp"]
    assert fsdp and ddp
    for r in fsdp:  # FSDP shards gradients and states over the 4 GPUs; DDP keeps them whole
        assert r.grads == trainable // 4
    assert all(r.grads == trainable for r in ddp)
    assert all(r.samples_per_s and r.samples_per_s > 0 for r in big.rows)
    small = main([*common, "--gpu-memory", "0.1"])
    out = capsys.readouterr().out
    assert not any(r.fits for r in small.rows) and "no setting the trainer has fits" in out
    # The step's weights are the ones the trainer builds.
    assert big.model.weight_bytes == mp.build_plan_model(cfg).weight_bytes
