"""A minimal TOML writer for the stage configs the toy run hands to the trainer (Python has only a TOML reader)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as a TOML value")


def dumps(config: Mapping) -> str:
    """{key: scalar, table: {key: scalar, array_of_tables: [{...}]}} -> TOML text (two levels, as stage configs)."""
    lines = [f"{k} = {_value(v)}" for k, v in config.items() if not isinstance(v, Mapping)]
    for name, table in config.items():
        if not isinstance(table, Mapping):
            continue
        lines += ["", f"[{name}]"]
        nested = []
        for k, v in table.items():
            if isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v):
                nested.append((k, v))
            else:
                lines.append(f"{k} = {_value(v)}")
        for k, items in nested:
            for item in items:
                lines += ["", f"[[{name}.{k}]]"] + [f"{ik} = {_value(iv)}" for ik, iv in item.items()]
    return "\n".join(lines) + "\n"


def write(config: Mapping, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(config), encoding="utf-8")
    return path
