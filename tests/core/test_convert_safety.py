"""Safe unpickling of official checkpoints: plain fairseq content loads, anything that would run code is refused
before it runs."""

from __future__ import annotations

import argparse
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from kosmos_g_core.official_checkpoint import ConversionError, read_official_state_dict, safe_torch_load


class _WritesMarker:
    """Unpickling this calls builtins.open(marker, "w"): the file appears iff the pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _weights():
    return {"gpt_model.decoder.layer_norm.weight": torch.ones(4, dtype=torch.float16)}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickle_that_runs_code_is_refused_without_running(tmp_path, zip_format):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pt"
    torch.save({"model": _weights(), "extra": _WritesMarker(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with pytest.raises(ConversionError) as info:
        read_official_state_dict(path)
    message = str(info.value)
    assert str(path) in message and "io.open" in message and "Nothing in the file was executed" in message
    assert not marker.exists()


def test_plain_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_WritesMarker(marker), protocol=2))
    with pytest.raises(ConversionError, match="Nothing in the file was executed"):
        safe_torch_load(path)
    assert not marker.exists()


def test_full_fairseq_trainer_checkpoint_loads(tmp_path):
    """What fairseq's trainer writes besides the weights: legacy args, a plain cfg, optimizer and meter state."""
    path = tmp_path / "checkpoint_last.pt"
    state = {
        "args": argparse.Namespace(arch="kosmosg_xl", lr=[1e-3]),
        "cfg": {"model": {"_name": "kosmosg_xl", "subln": True}, "optimization": {"lr": [0.001]}},
        "model": _weights(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "KosmosGLoss", "optimizer_name": "FP16Optimizer",
                               "lr_scheduler_state": {"best": None}, "num_updates": 2000}],
        "task_state": {},
        "extra_state": {"metrics": {"train": {"loss": {"val": torch.tensor(1.5), "count": 3}}},
                        "train_iterator": {"epoch": 1, "iterations_in_epoch": 7, "shuffle": True},
                        "previous_training_time": 12.5},
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(4)}},
                                 "param_groups": [{"betas": (0.9, 0.98), "params": [0]}], "loss_scale": 4.0},
    }
    torch.save(state, path)
    loaded = read_official_state_dict(path)
    assert list(loaded) == ["gpt_model.decoder.layer_norm.weight"]
    assert loaded["gpt_model.decoder.layer_norm.weight"].dtype == torch.float16


def test_omegaconf_config_loads_as_inert_data(tmp_path, monkeypatch):
    """fairseq versions that pickle an OmegaConf DictConfig: its classes are mapped to inert records, so the file
    loads without OmegaConf installed and none of OmegaConf's code runs. The classes are faked here under their real
    module names (OmegaConf is not a dependency)."""
    calls = []

    class DictConfig:
        def __setstate__(self, state):  # would run if the real class were used
            calls.append(state)

    class ContainerMetadata:
        pass

    DictConfig.__module__, DictConfig.__qualname__ = "omegaconf.dictconfig", "DictConfig"
    ContainerMetadata.__module__, ContainerMetadata.__qualname__ = "omegaconf.base", "ContainerMetadata"
    for name, cls in (("omegaconf.dictconfig", DictConfig), ("omegaconf.base", ContainerMetadata)):
        module = types.ModuleType(name)
        setattr(module, cls.__qualname__, cls)
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "omegaconf", types.ModuleType("omegaconf"))

    cfg = DictConfig()
    meta = ContainerMetadata()
    meta.__dict__.update({"ref_type": dict, "object_type": dict, "key": None, "flags": {"struct": True}})
    cfg.__dict__.update({"_metadata": meta, "_parent": None, "_content": {"lr": 0.001}})
    path = tmp_path / "with_omegaconf.pt"
    torch.save({"cfg": cfg, "model": _weights()}, path)
    for name in ("omegaconf", "omegaconf.dictconfig", "omegaconf.base"):
        monkeypatch.delitem(sys.modules, name)

    state = safe_torch_load(path)
    assert type(state["cfg"]).__name__ == "DictConfig" and type(state["cfg"]) is not DictConfig
    assert state["cfg"]._content == {"lr": 0.001}
    assert calls == []


def test_numpy_objects_are_refused(tmp_path):
    path = tmp_path / "numpy.pt"
    torch.save({"model": _weights(), "best": np.float64(0.5)}, path)
    with pytest.raises(ConversionError, match="numpy"):
        safe_torch_load(path)
