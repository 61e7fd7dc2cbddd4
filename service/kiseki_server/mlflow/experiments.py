"""MLflow's /mlflow/experiments/* routes over kiseki's experiment and search stores.

With auth on, the permissions are those of MLflow's auth plugin: reading needs READ on the experiment,
renaming and tags EDIT, delete and restore MANAGE; anyone with a write-scoped credential may create one
(and manages it); a search lists only what the caller may read.
"""

from __future__ import annotations

from aiohttp import web

from kiseki.models import ExperimentCreate, ExperimentSearch, ViewType
from kiseki_server.appkeys import ARTIFACTS, STORES
from kiseki_server.auth.audit import audit
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import EDIT_HANDLER, MANAGE_HANDLER, READ, READ_HANDLER, WRITE, Level
from kiseki_server.mlflow.errors import MlflowRoute, invalid, not_found
from kiseki_server.mlflow.filters import translate_filter, translate_order_by
from kiseki_server.mlflow.wire import (
    KeyValue,
    Lenient,
    experiment_id_of,
    experiment_json,
    message,
    respond,
)

_VIEW_TYPES = {
    "ACTIVE_ONLY": ViewType.ACTIVE_ONLY,
    "DELETED_ONLY": ViewType.DELETED_ONLY,
    "ALL": ViewType.ALL,
    "1": ViewType.ACTIVE_ONLY,
    "2": ViewType.DELETED_ONLY,
    "3": ViewType.ALL,
}


def view_type(value: str | int | None) -> ViewType:
    """MLflow's ViewType, by name or protobuf number."""
    if value is None or value == "":
        return ViewType.ACTIVE_ONLY
    found = _VIEW_TYPES.get(str(value).upper())
    if found is None:
        raise invalid(f"Invalid view type {value!r}; expected ACTIVE_ONLY, DELETED_ONLY or ALL")
    return found


class ById(Lenient):
    experiment_id: str | None = None


class Create(Lenient):
    name: str | None = None
    artifact_location: str | None = None
    tags: list[KeyValue] = []


class ByName(Lenient):
    experiment_name: str | None = None


class Update(ById):
    new_name: str | None = None


class Tag(ById):
    key: str | None = None
    value: str = ""


class Search(Lenient):
    max_results: int = 1000
    page_token: str | None = None
    filter: str | None = None
    order_by: list[str] = []
    view_type: str | int | None = None


async def create(request: web.Request) -> web.Response:
    body = await message(request, Create)
    if not body.name:
        raise invalid("Missing value for required parameter 'name'")
    experiment = await request.app[STORES].experiments.create(
        **ExperimentCreate(
            name=body.name,
            artifact_location=body.artifact_location or None,
            tags={t.key: t.value for t in body.tags},
        ).model_dump()
    )
    await request.app[AUTHORIZER].grant_creator(request, int(experiment.experiment_id))
    await audit(request, "experiment.create", "experiment", experiment.experiment_id, name=experiment.name)
    return respond({"experiment_id": experiment.experiment_id})


async def _experiment(request: web.Request, experiment_id: str | None, needed: Level) -> int:
    """kiseki's id of the experiment a message names, once the caller is known to hold `needed` on it."""
    found = await experiment_id_of(request.app[STORES], experiment_id)
    await request.app[AUTHORIZER].require_experiment(request, found, needed)
    return found


async def get(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    experiment_id = await _experiment(request, (await message(request, ById)).experiment_id, Level.READ)
    experiment = await stores.experiments.get(experiment_id)
    return respond({"experiment": experiment_json(experiment, request.app[ARTIFACTS])})


async def get_by_name(request: web.Request) -> web.Response:
    name = (await message(request, ByName)).experiment_name
    if not name:
        raise invalid("Missing value for required parameter 'experiment_name'")
    stores = request.app[STORES]
    experiment = await stores.experiments.find_by_name(name)
    if experiment is None:
        raise not_found(f"Could not find experiment with name '{name}'")
    await request.app[AUTHORIZER].require_experiment(request, int(experiment.experiment_id), Level.READ)
    return respond({"experiment": experiment_json(experiment, request.app[ARTIFACTS])})


async def update(request: web.Request) -> web.Response:
    body = await message(request, Update)
    stores = request.app[STORES]
    experiment_id = await _experiment(request, body.experiment_id, Level.EDIT)
    if body.new_name:
        await stores.experiments.rename(experiment_id, body.new_name)
        await audit(request, "experiment.rename", "experiment", experiment_id, name=body.new_name)
    return respond()


async def delete(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    experiment_id = await _experiment(request, (await message(request, ById)).experiment_id, Level.MANAGE)
    experiment = await stores.experiments.set_lifecycle(experiment_id, "deleted")
    await audit(request, "experiment.delete", "experiment", experiment_id, name=experiment.name)
    return respond()


async def restore(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    experiment_id = await _experiment(request, (await message(request, ById)).experiment_id, Level.MANAGE)
    experiment = await stores.experiments.set_lifecycle(experiment_id, "active")
    await audit(request, "experiment.restore", "experiment", experiment_id, name=experiment.name)
    return respond()


async def set_tag(request: web.Request) -> web.Response:
    body = await message(request, Tag)
    stores = request.app[STORES]
    experiment_id = await _experiment(request, body.experiment_id, Level.EDIT)
    if not body.key:
        raise invalid("Missing value for required parameter 'key'")
    await stores.experiments.set_tag(experiment_id, body.key, body.value)
    return respond()


async def delete_tag(request: web.Request) -> web.Response:
    body = await message(request, Tag)
    stores = request.app[STORES]
    experiment_id = await _experiment(request, body.experiment_id, Level.EDIT)
    if not body.key:
        raise invalid("Missing value for required parameter 'key'")
    await stores.experiments.delete_tag(experiment_id, body.key)
    return respond()


async def search(request: web.Request) -> web.Response:
    body = await message(request, Search)
    query = ExperimentSearch(
        filter=translate_filter(body.filter, runs=False),
        order_by=translate_order_by(body.order_by, runs=False),
        max_results=body.max_results,
        page_token=body.page_token or None,
        view_type=view_type(body.view_type),
    )
    reader = request.app[AUTHORIZER].reader(request)
    found = await request.app[STORES].search.search_experiments(query, reader=reader)
    store = request.app[ARTIFACTS]
    answer: dict[str, object] = {"experiments": [experiment_json(e, store) for e in found.experiments]}
    if found.next_page_token:
        answer["next_page_token"] = found.next_page_token
    return respond(answer)


ROUTES: list[MlflowRoute] = [
    ("POST", "experiments/create", create, WRITE),
    ("GET", "experiments/get", get, READ_HANDLER),
    ("GET", "experiments/get-by-name", get_by_name, READ_HANDLER),
    ("POST", "experiments/search", search, READ),
    ("GET", "experiments/search", search, READ),
    ("POST", "experiments/update", update, EDIT_HANDLER),
    ("POST", "experiments/delete", delete, MANAGE_HANDLER),
    ("POST", "experiments/restore", restore, MANAGE_HANDLER),
    ("POST", "experiments/set-experiment-tag", set_tag, EDIT_HANDLER),
    ("POST", "experiments/delete-experiment-tag", delete_tag, EDIT_HANDLER),
]
