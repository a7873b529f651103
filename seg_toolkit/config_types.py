"""Plain YAML data -> typed dataclasses, strictly: an unknown key fails with its dotted path and the
closest valid key, a wrong type with the expected type, a choice outside a ``Literal`` with the
choices. The schema itself (the sections and their fields) is :mod:`seg_toolkit.config`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal, Union

from .errors import ConfigError, closest

__all__ = ["build_dataclass"]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


#: optional string keys where "" is a value of its own (the empty RLE token), not a mistaken null
EMPTY_STRING_KEYS = frozenset({"submission.empty_token"})

#: a float written as text (YAML 1.1's 1e-3, a dict's "0.5"): digits, a dot, an exponent; Python's float() would also
#: take '1_0' (10.0), ' 1e-3 ' and 'infinity'
_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping (section), got {type(value).__name__} {value!r}")
        return build_dataclass(tp, value, path)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if value == "" and str in members and type(None) in args and path not in EMPTY_STRING_KEYS:
            # an empty path, column or name was read as null, the default (submission.path "" wrote submissions/<exp>.csv)
            raise ConfigError(f"{path}: an empty string; expected a non-empty string, or null for the default")
        if len(members) == 1 and typing.get_origin(members[0]) is Literal:  # Optional[Literal]: its "did you mean"
            try:
                return _convert(value, members[0], path)
            except ConfigError as e:
                raise ConfigError(f"{e}; or null") from None
        for arg in members:
            try:
                return _convert(value, arg, path)
            except ConfigError:
                continue  # the next member of the union; none fits: one message naming them all
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = closest(value, choices)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}")
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            # a scalar where a list is expected is the common one-value shorthand
            value = [value]
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_convert(k, key_tp, f"{path}"): _convert(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected bool (true/false), got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value):  # YAML 1.1 reads 1e-3 as a string; '1_0' stays text
            return float(value)
        raise ConfigError(f"{path}: expected float, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected str, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{path}: unsupported schema type {tp!r}")  # pragma: no cover


def build_dataclass(cls: type, data: dict, path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in names:
            close = closest(key, names, cutoff=0.5)
            hint = f"; did you mean {(path + '.' if path else '') + close!r}?" if close else ""
            if isinstance(key, bool):  # `on:` / `no:` as a key
                hint = f"; YAML reads an unquoted yes/no/on/off/true/false key as {key}: quote it"
            raise ConfigError(f"unknown config key {where!r}{hint} (valid keys here: {', '.join(names)})")
        kwargs[key] = _convert(value, hints[key], where)
    return cls(**kwargs)
