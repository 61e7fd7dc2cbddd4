"""Request parsing and response writing shared by the API handlers."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

import orjson
import pydantic
from aiohttp import web

from kiseki_server.errors import InvalidInput, validation_error

M = TypeVar("M", bound=pydantic.BaseModel)
E = TypeVar("E", bound=StrEnum)


async def read_model(request: web.Request, model: type[M]) -> M:
    """The request body validated as `model`: 400 for malformed JSON, 422 naming the bad field."""
    body = await request.read()
    if not body.strip():
        raise InvalidInput("request body is empty; expected a JSON object")
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise InvalidInput(f"request body is not valid JSON: {first['ctx']['error']}") from None
        raise validation_error(exc) from None


def model_response(model: pydantic.BaseModel, *, status: int = 200) -> web.Response:
    return web.Response(body=model.model_dump_json(), status=status, content_type="application/json")


def json_response(data: object, *, status: int = 200) -> web.Response:
    """JSON for plain data and numpy arrays (orjson writes arrays without a Python loop)."""
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status=status,
        content_type="application/json",
    )


def query_str(request: web.Request, name: str, *, required: bool = False) -> str | None:
    value = request.query.get(name)
    if value is None and required:
        raise InvalidInput(f"query parameter '{name}' is required", field=name)
    if value is not None and "\x00" in value:
        raise InvalidInput(f"query parameter '{name}' must not contain NUL", field=name)
    return value


def query_int(request: web.Request, name: str, *, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"query parameter '{name}' must be an integer, got {raw!r}", field=name) from None
    if not lo <= value <= hi:
        raise InvalidInput(f"query parameter '{name}' must be between {lo} and {hi}, got {value}", field=name)
    return value


def query_enum(request: web.Request, name: str, enum: type[E], *, default: E) -> E:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return enum(raw)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise InvalidInput(
            f"query parameter '{name}' must be one of {allowed}; got {raw!r}", field=name
        ) from None
