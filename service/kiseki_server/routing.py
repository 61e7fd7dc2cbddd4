"""The API's route table: each route with the models that document it in the OpenAPI document."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pydantic
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    type: str  # JSON schema type: "string" or "integer"
    description: str
    required: bool = False


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


PAGING = (
    Query("max_results", "integer", "Page size."),
    Query("page_token", "string", "The next_page_token of the previous page."),
)
VIEW_TYPE = Query("view_type", "string", "active_only (default), deleted_only or all.")
