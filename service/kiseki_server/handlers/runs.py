"""/api/v1/runs"""

from __future__ import annotations

from aiohttp import web

from kiseki.models import Run, RunCreate, RunUpdate, TagSet
from kiseki_server.appkeys import STORES
from kiseki_server.auth.audit import audit
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import EDIT_HANDLER, EDIT_PATH, MANAGE_PATH, READ_PATH, Level
from kiseki_server.http_io import model_response, query_str, read_model
from kiseki_server.routing import Query, Route
from kiseki_server.stores.experiments import parse_experiment_id
from kiseki_server.stores.runs import parse_run_id


def run_id_of(request: web.Request) -> str:
    return parse_run_id(request.match_info["run_id"])


async def create(request: web.Request) -> web.Response:
    body = await read_model(request, RunCreate)
    experiment_id = parse_experiment_id(body.experiment_id)
    await request.app[AUTHORIZER].require_experiment(request, experiment_id, Level.EDIT)
    return model_response(await request.app[STORES].runs.create(body), status=201)


async def get(request: web.Request) -> web.Response:
    return model_response(await request.app[STORES].runs.get(run_id_of(request)))


async def update(request: web.Request) -> web.Response:
    run_id = run_id_of(request)
    body = await read_model(request, RunUpdate)
    return model_response(await request.app[STORES].runs.update(run_id, body))


async def delete(request: web.Request) -> web.Response:
    run = await request.app[STORES].runs.set_lifecycle(run_id_of(request), "deleted")
    await audit(request, "run.delete", "run", run.info.run_id, experiment_id=run.info.experiment_id)
    return model_response(run)


async def restore(request: web.Request) -> web.Response:
    run = await request.app[STORES].runs.set_lifecycle(run_id_of(request), "active")
    await audit(request, "run.restore", "run", run.info.run_id, experiment_id=run.info.experiment_id)
    return model_response(run)


async def set_tag(request: web.Request) -> web.Response:
    run_id = run_id_of(request)
    body = await read_model(request, TagSet)
    await request.app[STORES].runs.set_tag(run_id, body.key, body.value)
    return model_response(await request.app[STORES].runs.get(run_id))


async def delete_tag(request: web.Request) -> web.Response:
    run_id = run_id_of(request)
    key = query_str(request, "key", required=True)
    assert key is not None
    await request.app[STORES].runs.delete_tag(run_id, key)
    return model_response(await request.app[STORES].runs.get(run_id))


_ONE = "/api/v1/runs/{run_id}"
ROUTES = [
    Route("POST", "/api/v1/runs", create, "Create a run", RunCreate, Run, 201, access=EDIT_HANDLER),
    Route(
        "GET",
        _ONE,
        get,
        "Get a run with its params, tags and latest metric values",
        response=Run,
        access=READ_PATH,
    ),
    Route("PATCH", _ONE, update, "Update a run's status, end time or name", RunUpdate, Run, access=EDIT_PATH),
    Route(
        "DELETE", _ONE, delete, "Delete a run (soft: it can be restored)", response=Run, access=MANAGE_PATH
    ),
    Route("POST", _ONE + "/restore", restore, "Restore a deleted run", response=Run, access=MANAGE_PATH),
    Route("POST", _ONE + "/tags", set_tag, "Set a run tag", TagSet, Run, access=EDIT_PATH),
    Route(
        "DELETE",
        _ONE + "/tags",
        delete_tag,
        "Delete a run tag",
        response=Run,
        query=(Query("key", "string", "Tag key.", required=True),),
        access=EDIT_PATH,
    ),
]
