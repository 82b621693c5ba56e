"""Typed configuration from plain dicts: an unknown key or a wrong type is a one-line error.

Recipes are YAML; each section maps onto a dataclass here or in the module that owns it
(tasks and balancers declare their own option dataclasses). `build(cls, data, where)` walks the
dataclass fields and checks every value, so a typo like `optim.lrr` fails at load time with its
dotted path instead of being silently ignored.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping, Type, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is unknown or has the wrong type; the message has its dotted path."""


def build(cls: Type[T], data: Any, where: str = "") -> T:
    """Builds dataclass `cls` from a mapping, checking keys and types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        path = _join(where, unknown[0])
        raise ConfigError(f"{path}: unknown key (known: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    values = {name: _coerce(hints[name], value, _join(where, name)) for name, value in data.items()}
    try:
        obj = cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where or 'recipe'}: {exc}") from None
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}" if where else str(exc)) from None
    return obj


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config (for checkpoints and model provenance)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else str(key)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        key_tp, val_tp = args if args else (Any, Any)
        return {_coerce(key_tp, k, where): _coerce(val_tp, v, _join(where, str(k))) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {_describe(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {_describe(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {_describe(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {_describe(value)}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    raise ConfigError(f"{where}: unsupported config type {tp}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"
