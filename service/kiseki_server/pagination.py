"""Opaque keyset page tokens: the last row's sort key, so a page never costs an OFFSET scan."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from kiseki_server.errors import InvalidInput


def encode_token(*key: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_token(token: str, *types: type) -> tuple[Any, ...]:
    """The key a token was made from, checked against the expected types (a forged token is a 400)."""
    try:
        key = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if len(key) == len(types) and all(isinstance(v, t) for v, t in zip(key, types, strict=True)):
            return tuple(key)
    except (ValueError, TypeError):
        pass
    raise InvalidInput("page_token is not a token this endpoint returned", field="page_token")
