"""MLflow's /mlflow/experiments/* routes over kiseki's experiment and search stores."""

from __future__ import annotations

from aiohttp import web

from kiseki.models import ExperimentCreate, ExperimentSearch, ViewType
from kiseki_server.appkeys import ARTIFACTS, STORES
from kiseki_server.mlflow.errors import invalid, not_found
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
    return respond({"experiment_id": experiment.experiment_id})


async def get(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    experiment_id = await experiment_id_of(stores, (await message(request, ById)).experiment_id)
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
    return respond({"experiment": experiment_json(experiment, request.app[ARTIFACTS])})


async def update(request: web.Request) -> web.Response:
    body = await message(request, Update)
    stores = request.app[STORES]
    experiment_id = await experiment_id_of(stores, body.experiment_id)
    if body.new_name:
        await stores.experiments.rename(experiment_id, body.new_name)
    return respond()


async def delete(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    experiment_id = await experiment_id_of(stores, (await message(request, ById)).experiment_id)
    await stores.experiments.set_lifecycle(experiment_id, "deleted")
    return respond()


async def restore(request: web.Request) -> web.Response:
    stores = request.app[STORES]
    experiment_id = await experiment_id_of(stores, (await message(request, ById)).experiment_id)
    await stores.experiments.set_lifecycle(experiment_id, "active")
    return respond()


async def set_tag(request: web.Request) -> web.Response:
    body = await message(request, Tag)
    stores = request.app[STORES]
    experiment_id = await experiment_id_of(stores, body.experiment_id)
    if not body.key:
        raise invalid("Missing value for required parameter 'key'")
    await stores.experiments.set_tag(experiment_id, body.key, body.value)
    return respond()


async def delete_tag(request: web.Request) -> web.Response:
    body = await message(request, Tag)
    stores = request.app[STORES]
    experiment_id = await experiment_id_of(stores, body.experiment_id)
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
    found = await request.app[STORES].search.search_experiments(query)
    store = request.app[ARTIFACTS]
    answer: dict[str, object] = {"experiments": [experiment_json(e, store) for e in found.experiments]}
    if found.next_page_token:
        answer["next_page_token"] = found.next_page_token
    return respond(answer)


ROUTES = [
    ("POST", "experiments/create", create),
    ("GET", "experiments/get", get),
    ("GET", "experiments/get-by-name", get_by_name),
    ("POST", "experiments/search", search),
    ("GET", "experiments/search", search),
    ("POST", "experiments/update", update),
    ("POST", "experiments/delete", delete),
    ("POST", "experiments/restore", restore),
    ("POST", "experiments/set-experiment-tag", set_tag),
    ("POST", "experiments/delete-experiment-tag", delete_tag),
]
