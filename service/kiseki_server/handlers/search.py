"""POST /api/v1/runs/search and /api/v1/experiments/search: the filter language of docs/search.md."""

from __future__ import annotations

from aiohttp import web

from kiseki.models import ExperimentList, ExperimentSearch, RunList, RunSearch
from kiseki_server.appkeys import STORES
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import READ, READ_HANDLER, Level
from kiseki_server.http_io import model_response, read_model
from kiseki_server.routing import Route


async def search_runs(request: web.Request) -> web.Response:
    body = await read_model(request, RunSearch)
    authorizer = request.app[AUTHORIZER]
    if body.experiment_ids is not None:
        ids = [int(i) for i in body.experiment_ids]
        await authorizer.require_experiments(request, ids, Level.READ)
    return model_response(
        await request.app[STORES].search.search_runs(body, reader=authorizer.reader(request))
    )


async def search_experiments(request: web.Request) -> web.Response:
    body = await read_model(request, ExperimentSearch)
    reader = request.app[AUTHORIZER].reader(request)
    return model_response(await request.app[STORES].search.search_experiments(body, reader=reader))


ROUTES = [
    Route(
        "POST",
        "/api/v1/runs/search",
        search_runs,
        "Search runs of one, several or all experiments with a filter and order_by, paged by keyset",
        RunSearch,
        RunList,
        access=READ_HANDLER,
    ),
    Route(
        "POST",
        "/api/v1/experiments/search",
        search_experiments,
        "Search experiments by name, attributes and tags with a filter, paged by keyset",
        ExperimentSearch,
        ExperimentList,
        access=READ,
    ),
]
