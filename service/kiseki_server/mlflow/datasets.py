"""Dataset inputs (`/mlflow/runs/log-inputs`): stored in `run_inputs`, returned with the run.

MLflow keeps datasets per experiment and links them to runs; kiseki stores the dataset's description with
each run that used it, which is all a run page or `run.inputs` needs.
"""

from __future__ import annotations

import pydantic
from aiohttp import web

from kiseki.models import MAX_KEY_LENGTH, MAX_TAG_VALUE_LENGTH
from kiseki_server.appkeys import STORES
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import EDIT_HANDLER, Level
from kiseki_server.mlflow.errors import MlflowRoute, invalid
from kiseki_server.mlflow.wire import KeyValue, Lenient, message, respond, run_id_of
from kiseki_server.stores.datasets import RunInput

MAX_DATASETS_PER_CALL = 1000
MAX_DATASET_FIELD = 1_000_000
"""Longest schema or profile text (MLflow's own limit is far smaller for name and digest)."""


class Dataset(Lenient):
    name: str
    digest: str
    source_type: str
    source: str
    schema_: str | None = pydantic.Field(default=None, alias="schema")
    profile: str | None = None


class DatasetInput(Lenient):
    tags: list[KeyValue] = []
    dataset: Dataset


class LogInputs(Lenient):
    run_id: str | None = None
    datasets: list[DatasetInput] = []


def _check(value: str | None, what: str, limit: int) -> None:
    if value is not None and (len(value) > limit or "\x00" in value):
        raise invalid(f"{what} must be at most {limit} characters without NUL")


async def log_inputs(request: web.Request) -> web.Response:
    body = await message(request, LogInputs)
    run_id = run_id_of(body.run_id)
    if len(body.datasets) > MAX_DATASETS_PER_CALL:
        raise invalid(f"a call may log at most {MAX_DATASETS_PER_CALL} dataset inputs")
    inputs = []
    for i, item in enumerate(body.datasets):
        d = item.dataset
        for field, value in (("name", d.name), ("digest", d.digest), ("source_type", d.source_type)):
            _check(value, f"datasets.{i}.dataset.{field}", 500)
        _check(d.source, f"datasets.{i}.dataset.source", MAX_DATASET_FIELD)
        _check(d.schema_, f"datasets.{i}.dataset.schema", MAX_DATASET_FIELD)
        _check(d.profile, f"datasets.{i}.dataset.profile", MAX_DATASET_FIELD)
        for tag in item.tags:
            _check(tag.key, f"datasets.{i}.tags key", MAX_KEY_LENGTH)
            _check(tag.value, f"datasets.{i}.tags value", MAX_TAG_VALUE_LENGTH)
        inputs.append(
            RunInput(
                name=d.name,
                digest=d.digest,
                source_type=d.source_type,
                source=d.source,
                schema_text=d.schema_,
                profile=d.profile,
                tags={t.key: t.value for t in item.tags},
            )
        )
    await request.app[AUTHORIZER].require_run(request, run_id, Level.EDIT)
    stores = request.app[STORES]
    run = await stores.runs.get(run_id)
    if run.info.lifecycle_stage != "active":
        raise invalid(f"The run {run_id} must be in the 'active' state; it is deleted")
    await stores.datasets.add(run_id, inputs)
    return respond()


ROUTES: list[MlflowRoute] = [("POST", "runs/log-inputs", log_inputs, EDIT_HANDLER)]
