"""/api/v1/experiments"""

from __future__ import annotations

from aiohttp import web

from kiseki.models import (
    Experiment,
    ExperimentCreate,
    ExperimentGetOrCreateResult,
    ExperimentList,
    ExperimentUpdate,
    RunList,
    TagSet,
    ViewType,
)
from kiseki_server.appkeys import STORES
from kiseki_server.auth.audit import audit
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import EDIT_PATH, MANAGE_PATH, READ, READ_HANDLER, READ_PATH, WRITE, Level
from kiseki_server.errors import NotFound
from kiseki_server.http_io import model_response, query_enum, query_int, query_str, read_model
from kiseki_server.routing import VIEW_TYPE, Query, Route, paging
from kiseki_server.stores.experiments import parse_experiment_id

MAX_PAGE = 50_000
_PAGING = paging(MAX_PAGE, default=1000)


def _id(request: web.Request) -> int:
    return parse_experiment_id(request.match_info["experiment_id"])


async def create(request: web.Request) -> web.Response:
    body = await read_model(request, ExperimentCreate)
    experiment = await request.app[STORES].experiments.create(
        body.name, artifact_location=body.artifact_location, tags=body.tags
    )
    await request.app[AUTHORIZER].grant_creator(request, int(experiment.experiment_id))
    await audit(request, "experiment.create", "experiment", experiment.experiment_id, name=experiment.name)
    return model_response(experiment, status=201)


async def get_or_create(request: web.Request) -> web.Response:
    body = await read_model(request, ExperimentCreate)
    experiment, created = await request.app[STORES].experiments.get_or_create(
        body.name, artifact_location=body.artifact_location, tags=body.tags
    )
    authorizer = request.app[AUTHORIZER]
    if created:
        await authorizer.grant_creator(request, int(experiment.experiment_id))
        await audit(
            request, "experiment.create", "experiment", experiment.experiment_id, name=experiment.name
        )
    else:
        await authorizer.require_experiment(request, int(experiment.experiment_id), Level.READ)
    return model_response(ExperimentGetOrCreateResult(experiment=experiment, created=created))


async def search(request: web.Request) -> web.Response:
    result = await request.app[STORES].experiments.search(
        view_type=query_enum(request, "view_type", ViewType, default=ViewType.ACTIVE_ONLY),
        name_like=query_str(request, "name_like"),
        max_results=query_int(request, "max_results", default=1000, lo=1, hi=MAX_PAGE),
        page_token=query_str(request, "page_token"),
        reader=request.app[AUTHORIZER].reader(request),
    )
    return model_response(result)


async def get_by_name(request: web.Request) -> web.Response:
    name = query_str(request, "name", required=True)
    assert name is not None
    experiment = await request.app[STORES].experiments.find_by_name(name)
    if experiment is None:
        raise NotFound(f"no active experiment named '{name}'", field="name")
    await request.app[AUTHORIZER].require_experiment(request, int(experiment.experiment_id), Level.READ)
    return model_response(experiment)


async def get(request: web.Request) -> web.Response:
    return model_response(await request.app[STORES].experiments.get(_id(request)))


async def update(request: web.Request) -> web.Response:
    experiment_id = _id(request)
    body = await read_model(request, ExperimentUpdate)
    experiment = await request.app[STORES].experiments.rename(experiment_id, body.name)
    await audit(request, "experiment.rename", "experiment", experiment_id, name=experiment.name)
    return model_response(experiment)


async def delete(request: web.Request) -> web.Response:
    experiment = await request.app[STORES].experiments.set_lifecycle(_id(request), "deleted")
    await audit(request, "experiment.delete", "experiment", experiment.experiment_id, name=experiment.name)
    return model_response(experiment)


async def restore(request: web.Request) -> web.Response:
    experiment = await request.app[STORES].experiments.set_lifecycle(_id(request), "active")
    await audit(request, "experiment.restore", "experiment", experiment.experiment_id, name=experiment.name)
    return model_response(experiment)


async def set_tag(request: web.Request) -> web.Response:
    experiment_id = _id(request)
    body = await read_model(request, TagSet)
    await request.app[STORES].experiments.set_tag(experiment_id, body.key, body.value)
    return model_response(await request.app[STORES].experiments.get(experiment_id))


async def delete_tag(request: web.Request) -> web.Response:
    experiment_id = _id(request)
    key = query_str(request, "key", required=True)
    assert key is not None
    await request.app[STORES].experiments.delete_tag(experiment_id, key)
    return model_response(await request.app[STORES].experiments.get(experiment_id))


async def list_runs(request: web.Request) -> web.Response:
    experiment_id = _id(request)
    stores = request.app[STORES]
    await stores.experiments.get(experiment_id)  # 404 for an unknown experiment rather than an empty list
    result = await stores.runs.list_for_experiment(
        experiment_id,
        view_type=query_enum(request, "view_type", ViewType, default=ViewType.ACTIVE_ONLY),
        max_results=query_int(request, "max_results", default=1000, lo=1, hi=MAX_PAGE),
        page_token=query_str(request, "page_token"),
    )
    return model_response(result)


_ONE = "/api/v1/experiments/{experiment_id}"
ROUTES = [
    Route(
        "POST",
        "/api/v1/experiments",
        create,
        "Create an experiment",
        ExperimentCreate,
        Experiment,
        201,
        access=WRITE,
    ),
    Route(
        "POST",
        "/api/v1/experiments/get-or-create",
        get_or_create,
        "The active experiment with this name, created if missing (atomic under concurrent callers)",
        ExperimentCreate,
        ExperimentGetOrCreateResult,
        access=WRITE,
    ),
    Route(
        "GET",
        "/api/v1/experiments",
        search,
        "List experiments, newest first",
        response=ExperimentList,
        query=(
            VIEW_TYPE,
            Query("name_like", "string", "Case-insensitive LIKE pattern on the name."),
            *_PAGING,
        ),
        access=READ,
    ),
    Route(
        "GET",
        "/api/v1/experiments/by-name",
        get_by_name,
        "The active experiment with this name",
        response=Experiment,
        query=(Query("name", "string", "Exact experiment name.", required=True),),
        access=READ_HANDLER,
    ),
    Route("GET", _ONE, get, "Get an experiment", response=Experiment, access=READ_PATH),
    Route("PATCH", _ONE, update, "Rename an experiment", ExperimentUpdate, Experiment, access=EDIT_PATH),
    Route(
        "DELETE",
        _ONE,
        delete,
        "Delete an experiment (soft: it can be restored)",
        response=Experiment,
        access=MANAGE_PATH,
    ),
    Route(
        "POST",
        _ONE + "/restore",
        restore,
        "Restore a deleted experiment",
        response=Experiment,
        access=MANAGE_PATH,
    ),
    Route("POST", _ONE + "/tags", set_tag, "Set an experiment tag", TagSet, Experiment, access=EDIT_PATH),
    Route(
        "DELETE",
        _ONE + "/tags",
        delete_tag,
        "Delete an experiment tag",
        response=Experiment,
        query=(Query("key", "string", "Tag key.", required=True, rules={"minLength": 1}),),
        access=EDIT_PATH,
    ),
    Route(
        "GET",
        _ONE + "/runs",
        list_runs,
        "List an experiment's runs, newest first",
        response=RunList,
        query=(VIEW_TYPE, *_PAGING),
        access=READ_PATH,
    ),
]
