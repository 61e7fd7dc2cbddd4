"""POST /api/v1/runs/search and /api/v1/experiments/search: the filter language of docs/search.md."""

from __future__ import annotations

from aiohttp import web

from kiseki.models import ExperimentList, ExperimentSearch, RunList, RunSearch
from kiseki_server.appkeys import STORES
from kiseki_server.http_io import model_response, read_model
from kiseki_server.routing import Route


async def search_runs(request: web.Request) -> web.Response:
    body = await read_model(request, RunSearch)
    return model_response(await request.app[STORES].search.search_runs(body))


async def search_experiments(request: web.Request) -> web.Response:
    body = await read_model(request, ExperimentSearch)
    return model_response(await request.app[STORES].search.search_experiments(body))


ROUTES = [
    Route(
        "POST",
        "/api/v1/runs/search",
        search_runs,
        "Search runs of one, several or all experiments with a filter and order_by, paged by keyset",
        RunSearch,
        RunList,
    ),
    Route(
        "POST",
        "/api/v1/experiments/search",
        search_experiments,
        "Search experiments by name, attributes and tags with a filter, paged by keyset",
        ExperimentSearch,
        ExperimentList,
    ),
]
