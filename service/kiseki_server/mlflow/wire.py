"""MLflow's JSON, both ways: request bodies and query strings in, kiseki's models out as MLflow's shapes.

MLflow's protobuf JSON carries ids as strings, int64s as numbers or strings, doubles as numbers or the
strings "NaN"/"Infinity"/"-Infinity", and lists of `{key, value}` pairs where kiseki has dicts. Requests
are read leniently (unknown fields such as `run_uuid` are ignored, numbers may be strings), the way
MLflow's server reads them; the checks that matter (lengths, NULs, value ranges) are kiseki's models.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
import pydantic
from aiohttp import web

from kiseki.models import Experiment, Metric, Run, RunInfo
from kiseki_server.artifacts import ArtifactStore
from kiseki_server.errors import validation_error
from kiseki_server.mlflow.errors import invalid
from kiseki_server.stores import Stores
from kiseki_server.stores.datasets import RunInput
from kiseki_server.stores.experiments import parse_experiment_id
from kiseki_server.stores.runs import parse_run_id

M = TypeVar("M", bound=pydantic.BaseModel)

DEFAULT_EXPERIMENT_ID = "0"
"""The id MLflow's client uses when no experiment is set."""
DEFAULT_EXPERIMENT_NAME = "Default"
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"
ARTIFACTS_SCHEME = "mlflow-artifacts:/"


class Lenient(pydantic.BaseModel):
    """An MLflow request message: unknown fields ignored, numbers accepted as strings (as protobuf does)."""

    model_config = pydantic.ConfigDict(extra="ignore")


class KeyValue(Lenient):
    key: str
    value: str = ""


async def message(request: web.Request, model: type[M]) -> M:
    """The request's message: the JSON body of a POST, the query string of a GET."""
    if request.method == "GET":
        # Repeated parameters (`?order_by=a&order_by=b`) are a list field's values.
        data: Any = {}
        for key in dict.fromkeys(request.query.keys()):
            values = request.query.getall(key)
            field = model.model_fields.get(key)
            listed = field is not None and typing.get_origin(field.annotation) is list
            data[key] = values if listed else values[-1]
    else:
        raw = await request.read()
        try:
            data = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise invalid(f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise invalid("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise invalid(validation_error(exc).message) from None


def respond(data: Mapping[str, Any] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data or {}), content_type="application/json")


def number(value: float) -> float | str:
    """A double as MLflow's JSON writes it: NaN and ±Infinity as strings."""
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def pairs(items: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in items.items()]


def run_id_of(value: str | None, *, field: str = "run_id") -> str:
    if not value:
        raise invalid(f"Missing value for required parameter '{field}'")
    return parse_run_id(value, field=field)


async def experiment_id_of(stores: Stores, value: str | None, *, field: str = "experiment_id") -> int:
    """kiseki's experiment id for MLflow's: "0" is the experiment named Default, created on first use."""
    if value is None or value == "":
        raise invalid(f"Missing value for required parameter '{field}'")
    if value == DEFAULT_EXPERIMENT_ID:
        experiment, _ = await stores.experiments.get_or_create(DEFAULT_EXPERIMENT_NAME)
        return int(experiment.experiment_id)
    return parse_experiment_id(value, field=field)


def public_uri(store: ArtifactStore, uri: str) -> str:
    """An artifact location under the service's root as `mlflow-artifacts:/<relative>`, so that MLflow's
    client moves bytes through this service's artifact routes; anything else is shown as stored."""
    root = store.root_uri
    if uri.startswith(root + "/"):
        return ARTIFACTS_SCHEME + uri[len(root) + 1 :]
    return uri


def experiment_json(experiment: Experiment, store: ArtifactStore) -> dict[str, Any]:
    return {
        "experiment_id": experiment.experiment_id,
        "name": experiment.name,
        "artifact_location": public_uri(store, experiment.artifact_location),
        "lifecycle_stage": experiment.lifecycle_stage.value,
        "creation_time": experiment.creation_time,
        "last_update_time": experiment.last_update_time,
        "tags": pairs(experiment.tags),
    }


def run_tags(run: Run) -> dict[str, str]:
    """The run's tags with MLflow's system tags kept in kiseki's columns (run name, parent) filled in."""
    tags = dict(run.data.tags)
    tags[RUN_NAME_TAG] = run.info.run_name
    if run.info.parent_run_id:
        tags[PARENT_TAG] = run.info.parent_run_id
    return tags


def info_json(info: RunInfo, tags: Mapping[str, str], store: ArtifactStore) -> dict[str, Any]:
    body: dict[str, Any] = {
        "run_id": info.run_id,
        "run_uuid": info.run_id,
        "run_name": info.run_name,
        "experiment_id": info.experiment_id,
        "user_id": tags.get(USER_TAG, ""),
        "status": info.status.value,
        "start_time": info.start_time,
        "artifact_uri": public_uri(store, info.artifact_uri),
        "lifecycle_stage": info.lifecycle_stage.value,
    }
    if info.end_time is not None:
        body["end_time"] = info.end_time
    return body


def metrics_json(metrics: list[Metric]) -> list[dict[str, Any]]:
    """Latest metrics in MLflow's shape (its values may be the strings NaN/Infinity/-Infinity)."""
    return [
        {"key": m.key, "value": number(m.value), "timestamp": m.timestamp, "step": m.step} for m in metrics
    ]


def input_json(item: RunInput) -> dict[str, Any]:
    """A stored dataset input in MLflow's `DatasetInput` shape."""
    dataset = {
        "name": item.name,
        "digest": item.digest,
        "source_type": item.source_type,
        "source": item.source,
        "schema": item.schema_text,
        "profile": item.profile,
    }
    return {
        "tags": [{"key": k, "value": v} for k, v in item.tags.items()],
        "dataset": {k: v for k, v in dataset.items() if v is not None},
    }


def run_json(
    run: Run, metrics: list[Metric], store: ArtifactStore, inputs: list[RunInput] | None = None
) -> dict[str, Any]:
    tags = run_tags(run)
    return {
        "info": info_json(run.info, tags, store),
        "data": {"metrics": metrics_json(metrics), "params": pairs(run.data.params), "tags": pairs(tags)},
        "inputs": {"dataset_inputs": [input_json(i) for i in inputs or []]},
    }
