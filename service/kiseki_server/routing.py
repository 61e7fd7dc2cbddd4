"""The API's route table: each route with the models and parameter rules that document it in the
OpenAPI document. A parameter's rules are the ones its handler enforces, so that whatever the document
calls valid the service accepts (tests/test_schemathesis.py holds the two to that)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic
from aiohttp import web

from kiseki.models import (
    EXPERIMENT_ID_PATTERN,
    INT64_MAX,
    INT64_MIN,
    NO_NUL_PATTERN,
    RUN_ID_PATTERN,
    ViewType,
)
from kiseki_server.auth.models import NAME_PATTERN as USER_NAME_PATTERN
from kiseki_server.auth.policy import Access
from kiseki_server.pagination import TOKEN_PATTERN

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Query:
    """A query parameter. `rules` are extra JSON Schema keywords (minimum, maximum, pattern, enum,
    maxLength…); without them a string is documented as free of NUL (every handler refuses NUL) and an
    integer as a 64-bit one."""

    name: str
    type: str  # JSON schema type: "string" or "integer"
    description: str
    required: bool = False
    rules: Mapping[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        if self.type == "integer":
            return {"type": "integer", "minimum": INT64_MIN, "maximum": INT64_MAX, **self.rules}
        if self.type == "string":
            return {"type": "string", "pattern": NO_NUL_PATTERN, **self.rules}
        return {"type": self.type, **self.rules}


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[pydantic.BaseModel] | None = None
    response: type[pydantic.BaseModel] | None = None
    status: int = 200
    query: tuple[Query, ...] = field(default=())
    access: Access | None = field(kw_only=True)
    """What a caller needs when auth is on (None: open, e.g. signed data URLs); shown in the OpenAPI
    document and enforced by auth.middleware."""


PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "experiment_id": {"type": "string", "pattern": EXPERIMENT_ID_PATTERN, "description": "Decimal id."},
    "run_id": {
        "type": "string",
        "pattern": RUN_ID_PATTERN,
        "description": "32 hex digits (the dashed UUID form is accepted too).",
    },
    "user_name": {"type": "string", "pattern": USER_NAME_PATTERN, "description": "A user's name."},
    "token_id": {"type": "string", "pattern": r"^[0-9]{1,18}$", "description": "Decimal token id."},
}
"""The schema of each path parameter, by name: what parse_experiment_id / parse_run_id accept."""

PAGE_TOKEN = Query(
    "page_token",
    "string",
    "The next_page_token of the previous page.",
    rules={"pattern": TOKEN_PATTERN},
)


def paging(max_page: int, *, default: int | None = None) -> tuple[Query, Query]:
    """max_results (1 to `max_page`) and page_token, as `query_int(..., lo=1, hi=max_page)` checks them."""
    text = f"Page size, 1 to {max_page}" + (f"; default {default}." if default else ".")
    return Query("max_results", "integer", text, rules={"minimum": 1, "maximum": max_page}), PAGE_TOKEN


PAGING = paging(50_000, default=1000)
VIEW_TYPE = Query(
    "view_type",
    "string",
    "active_only (default), deleted_only or all.",
    rules={"enum": [v.value for v in ViewType]},
)
