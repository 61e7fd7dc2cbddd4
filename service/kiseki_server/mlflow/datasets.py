"""Dataset inputs (`/mlflow/runs/log-inputs`): stored in `run_inputs`, returned with the run.

MLflow keeps datasets per experiment and links them to runs; kiseki stores the dataset's description with
each run that used it, which is all a run page or `run.inputs` needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
import pydantic
from aiohttp import web

from kiseki.models import MAX_KEY_LENGTH, MAX_TAG_VALUE_LENGTH
from kiseki_server.appkeys import POOL, STORES
from kiseki_server.mlflow.errors import invalid
from kiseki_server.mlflow.wire import KeyValue, Lenient, message, respond, run_id_of

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
    rows = []
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
        tags = orjson.dumps({t.key: t.value for t in item.tags}).decode()
        rows.append((d.name, d.digest, d.source_type, d.source, d.schema_, d.profile, tags))
    run = await request.app[STORES].runs.get(run_id)
    if run.info.lifecycle_stage != "active":
        raise invalid(f"The run {run_id} must be in the 'active' state; it is deleted")
    if rows:
        columns = list(zip(*rows, strict=True))
        await request.app[POOL].execute(
            """
            INSERT INTO run_inputs (run_id, name, digest, source_type, source, schema, profile, tags)
            SELECT $1, d.* FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                       $7::text[], $8::jsonb[]) AS d
            ON CONFLICT (run_id, name, digest) DO UPDATE SET tags = excluded.tags
            """,
            run_id,
            *[list(c) for c in columns],
        )
    return respond()


async def inputs_of(pool: Any, run_ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """MLflow's `dataset_inputs` of each run, in the order they were first logged."""
    ids = list(run_ids)
    found: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in ids}
    if not ids:
        return found
    rows = await pool.fetch(
        "SELECT run_id, name, digest, source_type, source, schema, profile, tags::text AS tags"
        " FROM run_inputs WHERE run_id = ANY($1::uuid[]) ORDER BY position",
        ids,
    )
    for row in rows:
        dataset = {k: row[k] for k in ("name", "digest", "source_type", "source", "schema", "profile")}
        tags = orjson.loads(row["tags"])
        found[row["run_id"]].append(
            {
                "tags": [{"key": k, "value": v} for k, v in tags.items()],
                "dataset": {k: v for k, v in dataset.items() if v is not None},
            }
        )
    return found


ROUTES = [("POST", "runs/log-inputs", log_inputs)]
