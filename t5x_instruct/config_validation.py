"""Type checks for the config dataclasses users bind in gin (``T5Config.emb_dim = 512``).

Gin passes bound values through unchanged, so ``--gin.T5Config.emb_dim="'abc'"`` would only
fail deep inside model construction with a ``TypeError`` naming no field. Calling
:func:`check_field_types` first in ``__post_init__`` turns it into one error naming the
binding, the expected type and the value. Depends on nothing but :mod:`t5x_instruct.errors`,
so any layer may use it.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import types
import typing
from typing import Any

from t5x_instruct.errors import UserInputError


class ConfigTypeError(UserInputError):
    """A config field holds a value of the wrong type; the message names the gin binding."""


@functools.cache
def _field_types(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)  # resolves the string annotations of `annotations`
    return tuple((f.name, hints.get(f.name, Any)) for f in dataclasses.fields(cls))


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation``; annotations it cannot judge pass."""
    if annotation is Any:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:  # bool is an int to Python, but `emb_dim = True` is a mistake
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if annotation is float:  # ints are fine for floats (`dropout_rate = 0`)
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    cls = origin or annotation
    if cls in (tuple, list):  # gin writes sequences as lists or tuples
        return isinstance(value, (tuple, list))
    if isinstance(cls, type):
        return isinstance(value, cls)
    return True


def _describe(annotation: Any) -> str:
    names = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def check_field_types(config: Any, name: str | None = None) -> None:
    """Raises :class:`ConfigTypeError` for the first field of dataclass ``config`` whose value
    does not fit its annotation, naming the binding ``{name}.{field}`` (``name`` defaults to
    the class name, which is the gin configurable's name)."""
    cls = type(config)
    name = name or cls.__name__
    for field, annotation in _field_types(cls):
        value = getattr(config, field)
        if not _matches(value, annotation):
            raise ConfigTypeError(
                f"{name}.{field} must be {_describe(annotation)}, got {value!r} "
                f"({type(value).__name__}); fix the binding {name}.{field} in your gin "
                "file or --gin. flags."
            )
