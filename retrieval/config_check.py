"""Does a plain value (from YAML, JSON or `--set`) fit a config field's declared type?

Checked before anything is built, so a wrong value ends in one line naming the key, what was
expected and what was given, never in a TypeError from deep inside torch or timm. Free-form
mappings (`dict[str, Any]`, e.g. timm's backbone_kwargs) declare no types: a value there must
keep the shape of the value it replaces (a list of 4 ints stays a list of 4 ints), if any.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Literal, Union

from .configs import near_matches

_ONE = {bool: "true or false", int: "an int", float: "a number", str: "a string"}
_MANY = {bool: "booleans", int: "ints", float: "numbers", str: "strings"}


def fits(hint: Any, value: Any) -> bool:
    """Whether `value` is a plain form of type `hint` (a list for a tuple, an int for a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(fits(a, value) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, int | float)
    if hint is str:
        return isinstance(value, str | os.PathLike)
    if hint in (int, bool):
        return isinstance(value, hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits(args[0], v) for v in value)
        return len(value) == len(args) and all(fits(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):  # a mapping's keys are checked one by one
        return isinstance(value, dict | hint)
    return True  # a type this checker does not know: the config's own checks judge it


def expected(hint: Any) -> str:
    """What `hint` accepts, in words: 'a list of 2 numbers', 'an int or null'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(expected(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if hint is type(None):
        return "null"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_MANY.get(args[0], 'values')}"
        return f"a list of {len(args)} {_MANY.get(args[0], 'values')}"
    if origin is dict:
        return "a mapping"
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} keys"
    return _ONE.get(hint, getattr(hint, "__name__", str(hint)))


def like(example: Any) -> str:
    """The shape of a free-form `example` in words: 'a list of 4 ints, e.g. [16, 32, 64, 128]'."""
    if isinstance(example, list | tuple):
        kinds = {type(v) for v in example}
        what = _MANY.get(kinds.pop(), "values") if len(kinds) == 1 else "values"
        return f"a list of {len(example)} {what}, e.g. {list(example)}"
    if isinstance(example, dict):
        return "a mapping"
    return f"{_ONE.get(type(example), type(example).__name__)}, e.g. {example!r}"


def same_shape(example: Any, value: Any) -> bool:
    """Whether `value` can stand where free-form `example` stood: same kind, same length."""
    if example is None or isinstance(example, dict):
        return example is None or isinstance(value, dict)
    if isinstance(example, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(example)
            and all(same_shape(e, v) for e, v in zip(example, value, strict=True))
        )
    if isinstance(example, float):
        return fits(float, value)
    return fits(type(example), value)


def check_value(key: str, hint: Any, value: Any, current: Any = None, what: str = "") -> None:
    """Raise ValueError naming `key` when `value` does not fit `hint`; dataclass mappings are
    checked key by key, free-form ones against the `current` value each key replaces."""
    hints = _hints(hint)
    if hints is not None and isinstance(value, dict):
        for k, v in value.items():
            if k not in hints:
                raise _unknown(_join(key, k), [_join(key, h) for h in hints], what)
            check_value(_join(key, k), hints[k], v, _get(current, k), what)
    elif typing.get_origin(hint) is dict and isinstance(value, dict):
        for k, v in value.items():
            check_value(_join(key, k), Any, v, _get(current, k), what)
    elif hint is Any:
        if not same_shape(current, value):
            raise ValueError(f"{key}: expected {like(current)}, got {value!r}")
    elif not fits(hint, value):
        raise ValueError(f"{key}: expected {expected(hint)}, got {value!r}")


def hint_at(cls: type, key: str, what: str = "") -> Any:
    """The declared type of dotted `key` in dataclass `cls` (Any below a free-form mapping)."""
    hint: Any = cls
    for depth, part in enumerate(parts := key.split(".")):
        hints = _hints(hint)
        if hints is None:
            if typing.get_origin(hint) is dict:
                return Any  # backbone_kwargs.channels, dataset_options.num_train: free-form
            raise ValueError(f"{'.'.join(parts[:depth])}: expected a plain value, not keys in it")
        if part not in hints:
            raise _unknown(key, dotted_keys(cls), what)
        hint = hints[part]
    return hint


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every key of dataclass `cls`, nested dataclasses as dotted keys (model.head_dim)."""
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        nested = dataclasses.is_dataclass(hint)
        keys += dotted_keys(hint, f"{prefix}{name}.") if nested else [prefix + name]
    return keys


def _unknown(key: str, known: list[str], what: str) -> ValueError:
    hint = near_matches(key, known) or f"; expected one of {', '.join(known)}"
    return ValueError(f"unknown {what or 'keys'} [{key!r}]{hint}")


def _hints(hint: Any) -> dict[str, Any] | None:
    return typing.get_type_hints(hint) if dataclasses.is_dataclass(hint) else None


def _join(key: str, part: str) -> str:
    return f"{key}.{part}" if key else part


def _get(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None
