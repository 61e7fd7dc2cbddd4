"""MLflow's /mlflow/runs/* routes over kiseki's run, metric (batch) and search stores.

MLflow's system tags that kiseki keeps in columns are translated both ways: `mlflow.runName` is the run
name and `mlflow.parentRunId` (at creation) the parent run; they are shown as tags again on the way out.
Every logging call, one point or a thousand, is one kiseki batch: all-or-nothing, one transaction.

With auth on (MLflow's auth plugin's model): reading a run needs READ on its experiment, creating a run,
updating and logging EDIT, deleting and restoring MANAGE; a search checks READ on every experiment it
names and returns only runs of experiments the caller may read.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from aiohttp import web

from kiseki.models import LogBatch, RunCreate, RunList, RunSearch, RunStatus, RunUpdate
from kiseki_server.appkeys import ARTIFACTS, STORES
from kiseki_server.auth.audit import audit
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import EDIT_HANDLER, MANAGE_HANDLER, READ_HANDLER, Level
from kiseki_server.mlflow.errors import MlflowRoute, invalid
from kiseki_server.mlflow.experiments import view_type
from kiseki_server.mlflow.filters import translate_filter, translate_order_by
from kiseki_server.mlflow.wire import (
    PARENT_TAG,
    RUN_NAME_TAG,
    USER_TAG,
    KeyValue,
    Lenient,
    experiment_id_of,
    info_json,
    message,
    respond,
    run_id_of,
    run_json,
    run_tags,
)
from kiseki_server.stores.runs import parse_run_id
from kiseki_server.telemetry import TELEMETRY

MODEL_HISTORY_TAG = "mlflow.log-model.history"


class ById(Lenient):
    run_id: str | None = None
    run_uuid: str | None = None

    def id(self) -> str:
        return run_id_of(self.run_id or self.run_uuid)

    async def allowed(self, request: web.Request, needed: Level) -> str:
        """The run's id, once the caller is known to hold `needed` on the run's experiment."""
        run_id = self.id()
        await request.app[AUTHORIZER].require_run(request, run_id, needed)
        return run_id


class Create(Lenient):
    experiment_id: str | None = None
    user_id: str | None = None
    run_name: str | None = None
    start_time: int | None = None
    tags: list[KeyValue] = []


class Update(ById):
    status: str | None = None
    end_time: int | None = None
    run_name: str | None = None


class Tag(ById):
    key: str | None = None
    value: str = ""


class LogMetric(ById):
    key: str = ""
    value: float = 0.0
    timestamp: int | None = None
    step: int = 0


class Batch(ById):
    metrics: list[Any] = []
    params: list[KeyValue] = []
    tags: list[KeyValue] = []


class Search(Lenient):
    experiment_ids: list[str] = []
    filter: str | None = None
    run_view_type: str | int | None = None
    max_results: int = 1000
    order_by: list[str] = []
    page_token: str | None = None


async def _run_answer(request: web.Request, run_id: str) -> dict[str, Any]:
    stores = request.app[STORES]
    run = await stores.runs.get(run_id)
    metrics = await stores.metrics.latest_of_runs([run_id])
    inputs = await stores.datasets.of_runs([run_id])
    return run_json(run, metrics[run_id], request.app[ARTIFACTS], inputs[run_id])


async def create(request: web.Request) -> web.Response:
    body = await message(request, Create)
    stores = request.app[STORES]
    experiment_id = await experiment_id_of(stores, body.experiment_id)
    await request.app[AUTHORIZER].require_experiment(request, experiment_id, Level.EDIT)
    tags = {t.key: t.value for t in body.tags}
    name = body.run_name or tags.get(RUN_NAME_TAG) or None
    tags.pop(RUN_NAME_TAG, None)
    parent = tags.pop(PARENT_TAG, None)
    if body.user_id and USER_TAG not in tags:
        tags[USER_TAG] = body.user_id
    run = await stores.runs.create(
        RunCreate(
            experiment_id=str(experiment_id),
            run_name=name,
            start_time=body.start_time,
            tags=tags,
            parent_run_id=uuid.UUID(parse_run_id(parent, field="tags.mlflow.parentRunId"))
            if parent
            else None,
        )
    )
    return respond({"run": run_json(run, [], request.app[ARTIFACTS])})


async def get(request: web.Request) -> web.Response:
    run_id = await (await message(request, ById)).allowed(request, Level.READ)
    return respond({"run": await _run_answer(request, run_id)})


async def update(request: web.Request) -> web.Response:
    body = await message(request, Update)
    status = None
    if body.status:
        try:
            status = RunStatus(body.status.upper())
        except ValueError:
            raise invalid(f"Invalid run status {body.status!r}") from None
    run = await request.app[STORES].runs.update(
        await body.allowed(request, Level.EDIT),
        RunUpdate(status=status, end_time=body.end_time, run_name=body.run_name or None),
    )
    return respond({"run_info": info_json(run.info, run_tags(run), request.app[ARTIFACTS])})


async def delete(request: web.Request) -> web.Response:
    run_id = await (await message(request, ById)).allowed(request, Level.MANAGE)
    run = await request.app[STORES].runs.set_lifecycle(run_id, "deleted")
    await audit(request, "run.delete", "run", run_id, experiment_id=run.info.experiment_id)
    return respond()


async def restore(request: web.Request) -> web.Response:
    run_id = await (await message(request, ById)).allowed(request, Level.MANAGE)
    run = await request.app[STORES].runs.set_lifecycle(run_id, "active")
    await audit(request, "run.restore", "run", run_id, experiment_id=run.info.experiment_id)
    return respond()


async def _log(request: web.Request, run_id: str, batch: LogBatch) -> None:
    result = await request.app[STORES].metrics.log_batch(run_id, batch)
    request.app[TELEMETRY].observe_batch(applied=result.applied, points=result.points)


async def log_metric(request: web.Request) -> web.Response:
    """One point: MLflow's synchronous client sends each log_metric alone, so this is one statement."""
    body = await message(request, LogMetric)
    if not body.key:
        raise invalid("Missing value for required parameter 'key'")
    point = {"key": body.key, "value": body.value, "step": body.step, "timestamp": body.timestamp}
    await _log(
        request, await body.allowed(request, Level.EDIT), LogBatch.model_validate({"metrics": [point]})
    )
    return respond()


async def log_param(request: web.Request) -> web.Response:
    body = await message(request, Tag)
    if not body.key:
        raise invalid("Missing value for required parameter 'key'")
    await _log(
        request,
        await body.allowed(request, Level.EDIT),
        LogBatch.model_validate({"params": [{"key": body.key, "value": body.value}]}),
    )
    return respond()


def _tag_rows(tags: list[KeyValue]) -> tuple[list[dict[str, str]], str | None]:
    """Tags to store, and the run's new name when they carry `mlflow.runName` (kept as the run name)."""
    name = None
    rows = []
    for tag in tags:
        if tag.key == RUN_NAME_TAG:
            name = tag.value
        else:
            rows.append({"key": tag.key, "value": tag.value})
    return rows, name


async def _rename(request: web.Request, run_id: str, name: str | None) -> None:
    if name is not None:
        await request.app[STORES].runs.update(run_id, RunUpdate(run_name=name))


async def set_tag(request: web.Request) -> web.Response:
    body = await message(request, Tag)
    if not body.key:
        raise invalid("Missing value for required parameter 'key'")
    run_id = await body.allowed(request, Level.EDIT)
    rows, name = _tag_rows([KeyValue(key=body.key, value=body.value)])
    if rows:
        await _log(request, run_id, LogBatch.model_validate({"tags": rows}))
    await _rename(request, run_id, name)
    return respond()


async def delete_tag(request: web.Request) -> web.Response:
    body = await message(request, Tag)
    if not body.key:
        raise invalid("Missing value for required parameter 'key'")
    await request.app[STORES].runs.delete_tag(await body.allowed(request, Level.EDIT), body.key)
    return respond()


async def log_batch(request: web.Request) -> web.Response:
    body = await message(request, Batch)
    run_id = await body.allowed(request, Level.EDIT)
    params = [{"key": p.key, "value": p.value} for p in body.params]
    tags, name = _tag_rows(body.tags)
    # MLflow's metric rows are kiseki's row form (extra fields such as model_id are ignored).
    batch = LogBatch.model_validate({"metrics": body.metrics, "params": params, "tags": tags})
    await _log(request, run_id, batch)
    await _rename(request, run_id, name)
    return respond()


class LogModel(ById):
    model_json: str = ""


async def log_model(request: web.Request) -> web.Response:
    """MLflow 2.x's record of a logged model: appended to the run's `mlflow.log-model.history` tag (a
    JSON list), as MLflow's own server keeps it. (3.x logs models as LoggedModels, which kiseki lacks.)"""
    body = await message(request, LogModel)
    run_id = await body.allowed(request, Level.EDIT)
    try:
        model = orjson.loads(body.model_json)
    except orjson.JSONDecodeError:
        raise invalid("model_json is not valid JSON") from None
    run = await request.app[STORES].runs.get(run_id)
    history = orjson.loads(run.data.tags.get(MODEL_HISTORY_TAG, "[]"))
    history.append(model)
    tag = {"key": MODEL_HISTORY_TAG, "value": orjson.dumps(history).decode()}
    await _log(request, run_id, LogBatch.model_validate({"tags": [tag]}))
    return respond()


async def search(request: web.Request) -> web.Response:
    body = await message(request, Search)
    stores = request.app[STORES]
    authorizer = request.app[AUTHORIZER]
    named = [await experiment_id_of(stores, e, field="experiment_ids") for e in body.experiment_ids]
    await authorizer.require_experiments(request, named, Level.READ)
    ids = [str(e) for e in named]
    found: RunList = await stores.search.search_runs(
        RunSearch(
            experiment_ids=ids or None,
            filter=translate_filter(body.filter),
            order_by=translate_order_by(body.order_by),
            max_results=body.max_results,
            page_token=body.page_token or None,
            view_type=view_type(body.run_view_type),
        ),
        reader=authorizer.reader(request),
    )
    run_ids = [r.info.run_id for r in found.runs]
    metrics = await request.app[STORES].metrics.latest_of_runs(run_ids)
    inputs = await request.app[STORES].datasets.of_runs(run_ids)
    store = request.app[ARTIFACTS]
    answer: dict[str, Any] = {
        "runs": [run_json(r, metrics[r.info.run_id], store, inputs[r.info.run_id]) for r in found.runs]
    }
    if found.next_page_token:
        answer["next_page_token"] = found.next_page_token
    return respond(answer)


ROUTES: list[MlflowRoute] = [
    ("POST", "runs/create", create, EDIT_HANDLER),
    ("GET", "runs/get", get, READ_HANDLER),
    ("POST", "runs/update", update, EDIT_HANDLER),
    ("POST", "runs/delete", delete, MANAGE_HANDLER),
    ("POST", "runs/restore", restore, MANAGE_HANDLER),
    ("POST", "runs/search", search, READ_HANDLER),
    ("POST", "runs/log-metric", log_metric, EDIT_HANDLER),
    ("POST", "runs/log-parameter", log_param, EDIT_HANDLER),
    ("POST", "runs/set-tag", set_tag, EDIT_HANDLER),
    ("POST", "runs/delete-tag", delete_tag, EDIT_HANDLER),
    ("POST", "runs/log-batch", log_batch, EDIT_HANDLER),
    ("POST", "runs/log-model", log_model, EDIT_HANDLER),
]
