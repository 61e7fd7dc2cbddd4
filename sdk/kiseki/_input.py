"""Checking and converting what a training loop hands to `log_metric`, `log_param` and `set_tag`, at the call.

Values, steps and timestamps may be any number a loop produces: Python int/float/bool, numpy and torch
scalars, 0-d arrays (anything with `__float__` or `__index__`). They become plain `float`/`int` here, so the
background sender only ever serialises builtins, and bad input raises `InvalidInput` at the call that
passed it, naming the key and the rule, without touching anything else queued for the run. Key and value
rules are the wire models' (`kiseki.models`), the ones the server enforces: they live in one place.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Mapping
from typing import SupportsFloat, SupportsIndex, TypeAlias

from pydantic import TypeAdapter, ValidationError

from kiseki.errors import InvalidInput, InvalidType
from kiseki.models import INT64_MAX, INT64_MIN, Key, ParamValue, TagValue

Number: TypeAlias = SupportsFloat | SupportsIndex
"""What a metric value, step or timestamp may be: int, float, bool, numpy/torch scalars, 0-d arrays."""

_KEY: TypeAdapter[str] = TypeAdapter(Key)
_PARAM_VALUE: TypeAdapter[str] = TypeAdapter(ParamValue)
_TAG_VALUE: TypeAdapter[str] = TypeAdapter(TagValue)

VALID_KEYS: set[str] = set()
"""Keys already checked, so the check on `log_metric`'s hot path is one set lookup."""
_MAX_REMEMBERED_KEYS = 100_000


def _show(text: str) -> str:
    return repr(text) if len(text) <= 60 else f"{text[:57]!r}… ({len(text)} characters)"


def _describe(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '…'}"


def _reason(exc: ValidationError) -> str:
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())


def check_key(key: object, kind: str) -> str:
    """`key` as a plain str when the server would accept it as a `kind` ("metric", "param", "tag") key."""
    if not isinstance(key, str):
        raise InvalidType(f"a {kind} key must be a string, got {_describe(key)}", field="key")
    key = str(key)  # a str subclass (numpy.str_, an enum) becomes a plain str
    if key not in VALID_KEYS:
        try:
            _KEY.validate_python(key, strict=True)
        except ValidationError as exc:
            raise InvalidInput(f"{kind} key {_show(key)} is invalid: {_reason(exc)}", field="key") from None
        if len(VALID_KEYS) < _MAX_REMEMBERED_KEYS:
            VALID_KEYS.add(key)
    return key


_REAL_TYPES: set[type] = set()
"""Types already seen to be real numbers (numpy.float32, torch.Tensor, ...): the slow checks run once."""


def _scalar_problem(value: object) -> str | None:
    """Why `value` is not a real scalar number (None when it is one, or may be: float() decides)."""
    ndim = getattr(value, "ndim", 0)
    if ndim != 0:
        shape = getattr(value, "shape", None)
        return f"must be a scalar, not an array of shape {tuple(shape) if shape is not None else ndim}"
    kind = type(value)
    if kind in _REAL_TYPES:
        return None
    if value is None or isinstance(value, str | bytes | bytearray):
        return "must be a number"
    if isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real):
        return "must be a real number"
    if not hasattr(value, "__float__") and not hasattr(value, "__index__"):
        return "must be a number"
    if len(_REAL_TYPES) < 1000:
        _REAL_TYPES.add(kind)
    return None


def to_value(key: str, value: object) -> float:
    """A metric value as a plain float (NaN and ±inf are values too)."""
    if isinstance(value, float):
        return float(value)  # a float subclass (numpy.float64) becomes a plain float
    problem = None if value.__class__ is int else _scalar_problem(value)
    if problem is None:
        try:
            return float(value)  # type: ignore[arg-type]
        except OverflowError:
            raise InvalidInput(
                f"value of metric {_show(key)} is too large for a float64, got {_describe(value)}",
                field="value",
            ) from None
        except (TypeError, ValueError):
            problem = "must be a number"
    raise InvalidType(f"value of metric {_show(key)} {problem}, got {_describe(value)}", field="value")


def to_int(key: str, name: str, value: object, *, low: int = INT64_MIN, high: int = INT64_MAX) -> int:
    """A step or timestamp as a plain int in [low, high]: integers as they are, floats when whole."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        problem = _scalar_problem(value)
        if problem is not None:
            raise InvalidType(
                f"{name} of metric {_show(key)} {problem}, got {_describe(value)}", field=name
            ) from None
        try:
            real = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            raise InvalidType(
                f"{name} of metric {_show(key)} must be an integer, got {_describe(value)}", field=name
            ) from None
        if not real.is_integer():
            raise InvalidInput(
                f"{name} of metric {_show(key)} must be a whole number, got {_describe(value)}", field=name
            ) from None
        number = int(real)
    if not low <= number <= high:
        raise InvalidInput(
            f"{name} of metric {_show(key)} must be between {low} and {high}, got {number}", field=name
        )
    return number


def to_timestamp(key: str, value: object) -> int:
    return to_int(key, "timestamp", value, low=0)


def _text(kind: str, rule: TypeAdapter[str], key: object, value: object) -> tuple[str, str]:
    key = check_key(key, kind)
    text = str(value)
    try:
        rule.validate_python(text, strict=True)
    except ValidationError as exc:
        problem = _reason(exc)
        raise InvalidInput(f"value of {kind} {_show(key)} is invalid: {problem}", field="value") from None
    return key, text


def param(key: object, value: object) -> tuple[str, str]:
    """(key, str(value)) for a param (values are str()-ed, as MLflow does) the server would accept."""
    return _text("param", _PARAM_VALUE, key, value)


def tag(key: object, value: object) -> tuple[str, str]:
    """(key, str(value)) for a tag the server would accept."""
    return _text("tag", _TAG_VALUE, key, value)


def items(mapping: object, kind: str) -> list[tuple[object, object]]:
    """The pairs of a `log_params`/`log_metrics`/`set_tags` argument, or InvalidType when it is no mapping."""
    if not isinstance(mapping, Mapping):
        raise InvalidType(f"{kind} must be a mapping of key to value, got {_describe(mapping)}", field=kind)
    return list(mapping.items())
