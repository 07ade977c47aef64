"""JSON into the generated dataclasses, by their annotations.

Unknown keys are ignored (a newer forge may add fields); a missing
required field or a value of the wrong shape is an error naming the path.
"""

from __future__ import annotations

import dataclasses
import typing
from functools import lru_cache
from typing import Any, ForwardRef, Literal, Union

from . import types as _types


class LoadError(ValueError):
    """The forge answered something the SDK's types do not describe."""


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls, vars(_types))


def _resolve(tp: Any) -> Any:
    if isinstance(tp, str):
        tp = ForwardRef(tp)
    if isinstance(tp, ForwardRef):
        return eval(tp.__forward_arg__, vars(_types))  # noqa: S307 - names from our own module
    return tp


def load(tp: Any, value: Any, path: str = "$") -> Any:
    """`value` (parsed JSON) as an instance of the annotation `tp`."""
    tp = _resolve(tp)
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return load(arg, value, path)
            except LoadError as error:
                errors.append(str(error))
        raise LoadError(f"{path}: matches none of {args}: {'; '.join(errors)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise LoadError(f"{path}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise LoadError(f"{path}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [load(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise LoadError(f"{path}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {k: load(item, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise LoadError(f"{path}: expected an object for {tp.__name__}")
        hints = _hints(tp)
        kwargs = {}
        for field in dataclasses.fields(tp):
            key = field.name[:-1] if field.name.endswith("_") else field.name
            if key in value:
                kwargs[field.name] = load(hints[field.name], value[key], f"{path}.{key}")
            elif field.default is dataclasses.MISSING:
                raise LoadError(f"{path}: {tp.__name__} lacks {key}")
        return tp(**kwargs)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, bool) and type(value) is tp:
        return value
    if tp is type(None) and value is None:
        return None
    raise LoadError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r}"[:300])


def dump(value: Any) -> Any:
    """A dataclass (or anything inside one) back to JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for field in dataclasses.fields(value):
            item = getattr(value, field.name)
            if item is not None:
                key = field.name[:-1] if field.name.endswith("_") else field.name
                out[key] = dump(item)
        return out
    if isinstance(value, list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(v) for k, v in value.items()}
    return value

