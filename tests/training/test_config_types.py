"""Every value of every config table is checked against its field's type at load time, with a message that names
the section, the key, the value and the expected type, before any model is built."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from training.train import Trainer
from training.train_config import _SECTIONS, config_from_dict, load_config
from training.typed_tables import ConfigTypeError, check_value, field_types

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def wrong_value(annotation):
    """A value of the wrong type for `annotation`, as a user would mistype it in TOML."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union or type(None) in typing.get_args(annotation):
        annotation = args[0]
    if annotation is bool:
        return "false"        # a string: truthy, so it silently meant true before
    if annotation in (int, float):
        return "4"
    return 3                  # strings, lists and tables


def fields_of(cls, skip=()):
    return [(name, t) for name, t in field_types(cls).items() if name not in skip]


def test_the_issue_examples_read_as_the_user_wrote_them():
    with pytest.raises(ConfigTypeError, match=re.escape('[optim] lr = "1e-4": expected a number, got a string')):
        load_config(CONFIGS / "stage2.toml", ['optim.lr="1e-4"'])
    with pytest.raises(ConfigTypeError, match=re.escape('[checkpoint] every = "4": expected an integer, got a string')):
        load_config(CONFIGS / "stage2.toml", ['checkpoint.every="4"'])
    with pytest.raises(ConfigTypeError, match=re.escape('[model] activation_checkpointing = "false": expected true '
                                                        "or false, got a string")):
        load_config(CONFIGS / "stage2.toml", ['model.activation_checkpointing="false"'])
    with pytest.raises(ConfigTypeError, match=re.escape("[optim] betas[1] = true: expected a number, got a boolean")):
        load_config(CONFIGS / "stage2.toml", ["optim.betas=[0.9, true]"])


def test_lossless_conversions_only():
    assert check_value(1, float, "[optim] lr") == 1.0 and isinstance(check_value(1, float, "x"), float)
    assert check_value([1, 2], tuple[float, float], "x") == (1.0, 2.0)
    assert check_value(None, int | None, "x") is None
    for value, annotation in ((1.5, int), (True, int), (1, bool), ("1", float), ([1, 2, 3], tuple[float, float])):
        with pytest.raises(ConfigTypeError):
            check_value(value, annotation, "x")


@pytest.mark.parametrize("section", sorted(_SECTIONS))
def test_every_key_of_the_trainer_tables_is_type_checked(section):
    for key, annotation in fields_of(_SECTIONS[section]):
        value = wrong_value(annotation)
        with pytest.raises(ConfigTypeError, match=rf"^\[{section}\] {key}(\[0\])? = .*: expected .*, got a"):
            config_from_dict({"stage": "stage2", section: {key: value}})


def _stage_tables_fail_before_the_model(raw: dict, pattern: str) -> None:
    """Trainer(cfg) stops at the stage's table check: `[model] init` names a file that does not exist, so getting
    as far as building the model would raise FileNotFoundError instead."""
    raw = {**raw, "model": {"init": "/nonexistent/init.safetensors"}, "run": {"out_dir": "/nonexistent/run"}}
    with pytest.raises(ConfigTypeError, match=pattern):
        Trainer(config_from_dict(raw))


def _data(stage: str, **extra) -> dict:
    kind = {"stage1": "text", "stage2": "captions", "stage3": "compositional"}[stage]
    return {"batch_size": 2, "sources": [{"kind": kind, "shards": "x.tar"}], **extra}


@pytest.mark.parametrize("stage", ["stage1", "stage2", "stage3"])
def test_every_key_of_the_data_table_is_checked_before_the_model_is_built(stage):
    from training.data.config import DataConfig, SourceConfig

    for key, annotation in [*fields_of(DataConfig, skip=("sources", "extra")), ("batch_size", int)]:
        value = wrong_value(annotation)
        _stage_tables_fail_before_the_model({"stage": stage, "data": _data(stage, **{key: value})},
                                            rf"^\[data\] {key} = .*: expected .*, got a")
    for key, annotation in fields_of(SourceConfig, skip=("shards",)):
        data = _data(stage)
        data["sources"][0][key] = wrong_value(annotation)
        _stage_tables_fail_before_the_model({"stage": stage, "data": data},
                                            rf"^\[\[data.sources\]\] #0 {key} = .*: expected .*, got a")
    data = _data(stage)
    data["sources"][0]["shards"] = 3
    _stage_tables_fail_before_the_model({"stage": stage, "data": data}, r"#0 shards = 3: expected a brace pattern")


def test_every_key_of_the_semantic_table_is_checked_before_the_model_is_built():
    from training.stages.semantic_supervision import SemanticConfig

    for key, annotation in fields_of(SemanticConfig):
        _stage_tables_fail_before_the_model({"stage": "stage3", "data": _data("stage3"),
                                             "semantic": {key: wrong_value(annotation)}},
                                            rf"^\[semantic\] {key}(\[0\])? = .*: expected .*, got a")


def test_every_key_of_the_layout_data_table_is_checked_before_the_model_is_built():
    from training.stages.layout import LayoutDataConfig

    for key, annotation in fields_of(LayoutDataConfig):
        data = {"batch_size": 2, key: wrong_value(annotation)}
        _stage_tables_fail_before_the_model({"stage": "layout", "data": data},
                                            rf"^\[data\] {key}(\[0\])? = .*: expected .*, got a")
    _stage_tables_fail_before_the_model({"stage": "layout", "data": {"size": 64}}, r"batch_size = 0: expected at least")
    _stage_tables_fail_before_the_model({"stage": "layout", "data": {"batch_size": 2, "source": "coco_stuff"}},
                                        r"source = coco_stuff needs \[data\] captions")
