"""Opaque keyset page tokens: the last row's sort key, so a page never costs an OFFSET scan.

A token comes back from the client, so it is untrusted input: decoding checks its shape, every value's
type and range (integers fit a Postgres bigint, strings hold no NUL), and answers a 400 naming
`page_token` for anything this service could not have issued, never a 500 from the database.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

import orjson

from kiseki.models import INT64_MAX, INT64_MIN
from kiseki_server.errors import InvalidInput

TOKEN_PATTERN = r"^[A-Za-z0-9_-]*$"
"""What every token is made of (unpadded URL-safe base64), as a JSON Schema pattern."""
_ALPHABET = re.compile(TOKEN_PATTERN)


def encode_token(*key: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def bad_token(message: str = "page_token is not a token this endpoint returned") -> InvalidInput:
    return InvalidInput(message, field="page_token")


def valid_value(value: object, expected: type) -> bool:
    """Whether one decoded value has the type a token position promises: `int` means a bigint (never
    a bool), `str` text Postgres can hold, `list` a JSON array (its items are the caller's to check)."""
    if expected is int:
        return type(value) is int and INT64_MIN <= value <= INT64_MAX
    if expected is str:
        return type(value) is str and "\x00" not in value
    return type(value) is expected


def decode_token(token: str, *types: type) -> tuple[Any, ...]:
    """The key a token was made from, checked against the expected types (a forged token is a 400)."""
    if not _ALPHABET.fullmatch(token):
        raise bad_token()
    try:
        key = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError):
        raise bad_token() from None
    if (
        type(key) is not list
        or len(key) != len(types)
        or not all(valid_value(v, t) for v, t in zip(key, types, strict=True))
    ):
        raise bad_token()
    return tuple(key)
