"""TOML tables -> frozen dataclasses, every value checked against its field's type before anything is built.

The one owner of the config type rule: the trainer's tables (`[run]`, `[optim]`, ...), `[data]`, `[semantic]` and the
layout stage's `[data]` all go through `from_table`, so a wrong value type fails at load time with one message shape:

    [optim] lr = "1e-4": expected a number, got a string

rather than deep inside torch after the model is built (or never: the string "false" is truthy). Conversions are
only the lossless ones TOML needs: an integer where a number is expected becomes a float, a list becomes a tuple.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigTypeError(ValueError):
    """A config value has the wrong type or a table has an unknown key; the message names section and key."""


def _kind(value: Any) -> str:
    """How a value reads in TOML terms."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__


def _show(value: Any) -> str:
    """The value as the user wrote it in TOML (strings quoted, booleans lower case)."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _expected(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    if annotation is str:
        return "a string"
    if origin in (typing.Union, types.UnionType):
        # TOML has no null: an optional field is simply left out, so only the real types are named.
        return " or ".join(_expected(a) for a in typing.get_args(annotation) if a is not type(None))
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list" if args[0] is Any else f"a list of {_plural(args[0])}"
        return f"a list of {len(args)} {_plural(args[0])}"
    if origin is dict or annotation is dict:
        return "a table"
    return getattr(annotation, "__name__", str(annotation))


def _plural(annotation: Any) -> str:
    return {bool: "booleans", int: "integers", float: "numbers", str: "strings"}.get(annotation, "values")


def check_value(value: Any, annotation: Any, where: str) -> Any:
    """`value` converted to `annotation` (int -> float, list -> tuple) or ConfigTypeError naming `where`."""
    wrong = ConfigTypeError(f"{where} = {_show(value)}: expected {_expected(annotation)}, got {_kind(value)}")
    if annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is type(None):
                if value is None:
                    return None
                continue
            try:
                return check_value(value, option, where)
            except ConfigTypeError:
                pass
        raise wrong
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise wrong
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise wrong
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise wrong
    if annotation is str:
        if isinstance(value, str):
            return value
        raise wrong
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise wrong
        return tuple(check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict or annotation is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise wrong
    raise TypeError(f"{where}: the config field type {annotation!r} has no checker")  # a programming error


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a dataclass (annotations are strings under `from __future__`)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def check_table(cls: type, table: Mapping[str, Any], section: str, *, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The table's values, checked and converted, for the fields of `cls` it sets; unknown keys are errors.
    `ignore` names keys of the table that another owner reads (they are neither checked nor returned)."""
    if not isinstance(table, Mapping):
        raise ConfigTypeError(f"{section} must be a table, got {_kind(table)} {_show(table)}")
    types_ = field_types(cls)
    unknown = sorted(set(table) - set(types_) - set(ignore))
    if unknown:
        raise ConfigTypeError(f"unknown key(s) {unknown} in {section}; valid keys: {sorted(set(types_) | set(ignore))}")
    return {k: check_value(v, types_[k], f"{section} {k}") for k, v in table.items() if k in types_}


def from_table(cls: type[T], table: Mapping[str, Any], section: str) -> T:
    """`cls(**table)` with every value type-checked (see the module docstring)."""
    return cls(**check_table(cls, table, section))
