"""Runs with their params, tags and latest metric values."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from kiseki.models import Run, RunCreate, RunData, RunInfo, RunList, RunStatus, RunUpdate, ViewType
from kiseki_server.clock import now_ms
from kiseki_server.errors import Conflict, InvalidInput, NotFound
from kiseki_server.pagination import decode_token, encode_token
from kiseki_server.run_names import random_run_name
from kiseki_server.stores.experiments import lifecycles

_TERMINAL = {RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED}

# Params, tags and latest metrics come back as arrays of (key, value) records: one round trip per page
# of runs, each array read through its table's primary key.
RUN_COLUMNS = """
    r.run_id, r.experiment_id, r.run_name, r.status, r.start_time, r.end_time, r.lifecycle_stage,
    r.artifact_uri, r.parent_run_id,
    ARRAY(SELECT ROW(p.key, p.value) FROM params p WHERE p.run_id = r.run_id) AS params,
    ARRAY(SELECT ROW(t.key, t.value) FROM tags t WHERE t.run_id = r.run_id) AS tags,
    ARRAY(SELECT ROW(m.key, m.value) FROM latest_metrics m WHERE m.run_id = r.run_id) AS metrics
"""


def parse_run_id(value: str, *, field: str = "run_id") -> str:
    """The canonical 32-hex form of a run id (dashed UUIDs are accepted too)."""
    try:
        return uuid.UUID(value).hex
    except ValueError:
        raise InvalidInput(f"{field} must be a 32-hex run id, got {value!r}", field=field) from None


def info_from_row(row: asyncpg.Record) -> RunInfo:
    return RunInfo(
        run_id=row["run_id"],
        experiment_id=str(row["experiment_id"]),
        run_name=row["run_name"],
        status=row["status"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        lifecycle_stage=row["lifecycle_stage"],
        artifact_uri=row["artifact_uri"],
        parent_run_id=row["parent_run_id"],
    )


def run_from_row(row: asyncpg.Record) -> Run:
    return Run(
        info=info_from_row(row),
        data=RunData(params=dict(row["params"]), tags=dict(row["tags"]), metrics=dict(row["metrics"])),
    )


class RunStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, request: RunCreate) -> Run:
        run_id = uuid.uuid4().hex
        experiment_id = int(request.experiment_id)
        parent = request.parent_run_id.hex if request.parent_run_id else None
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                created = await conn.fetchval(
                    """
                    INSERT INTO runs (run_id, experiment_id, run_name, status, start_time, parent_run_id,
                                      artifact_uri)
                    SELECT $1, e.experiment_id, $3, $4, $5, $6,
                           e.artifact_location || '/' || $7 || '/artifacts'
                    FROM experiments e WHERE e.experiment_id = $2 AND e.lifecycle_stage = 'active'
                    RETURNING run_id
                    """,
                    run_id,
                    experiment_id,
                    request.run_name or random_run_name(),
                    request.status.value,
                    request.start_time if request.start_time is not None else now_ms(),
                    parent,
                    run_id,
                )
            except asyncpg.ForeignKeyViolationError:
                raise NotFound(f"parent run {parent} not found", field="parent_run_id") from None
            if created is None:
                stage = await conn.fetchval(
                    "SELECT lifecycle_stage FROM experiments WHERE experiment_id = $1", experiment_id
                )
                if stage is None:
                    raise NotFound(f"experiment {experiment_id} not found", field="experiment_id")
                raise Conflict(
                    f"experiment {experiment_id} is deleted; restore it first", field="experiment_id"
                )
            if request.tags:
                await conn.execute(
                    "INSERT INTO tags (run_id, key, value)"
                    " SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)",
                    run_id,
                    list(request.tags),
                    list(request.tags.values()),
                )
            return await self._fetch(conn, run_id)

    async def _fetch(self, conn: Any, run_id: str) -> Run:
        row = await conn.fetchrow(f"SELECT {RUN_COLUMNS} FROM runs r WHERE r.run_id = $1", run_id)
        return self._found(row, run_id)

    async def get(self, run_id: str) -> Run:
        return await self._fetch(self._pool, run_id)

    async def update(self, run_id: str, request: RunUpdate) -> Run:
        """Changes what the request names; a terminal status without an end time (and none stored yet)
        ends the run now."""
        ended_now = now_ms() if request.status in _TERMINAL else None
        row = await self._pool.fetchrow(
            f"""
            UPDATE runs r SET status = coalesce($2, status),
                              end_time = coalesce($3, end_time, $4),
                              run_name = coalesce($5, run_name)
            WHERE r.run_id = $1
            RETURNING {RUN_COLUMNS}
            """,
            run_id,
            request.status.value if request.status else None,
            request.end_time,
            ended_now,
            request.run_name,
        )
        return self._found(row, run_id)

    async def set_lifecycle(self, run_id: str, stage: str) -> Run:
        row = await self._pool.fetchrow(
            f"UPDATE runs r SET lifecycle_stage = $2 WHERE r.run_id = $1 RETURNING {RUN_COLUMNS}",
            run_id,
            stage,
        )
        return self._found(row, run_id)

    @staticmethod
    def _found(row: asyncpg.Record | None, run_id: str) -> Run:
        if row is None:
            raise NotFound(f"run {run_id} not found", field="run_id")
        return run_from_row(row)

    async def set_tag(self, run_id: str, key: str, value: str) -> None:
        try:
            await self._pool.execute(
                """
                INSERT INTO tags (run_id, key, value) VALUES ($1, $2, $3)
                ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value
                """,
                run_id,
                key,
                value,
            )
        except asyncpg.ForeignKeyViolationError:
            raise NotFound(f"run {run_id} not found", field="run_id") from None

    async def delete_tag(self, run_id: str, key: str) -> None:
        status = await self._pool.execute("DELETE FROM tags WHERE run_id = $1 AND key = $2", run_id, key)
        if status == "DELETE 0":
            await self.get(run_id)  # a 404 for the run if it is the run that is missing
            raise NotFound(f"run {run_id} has no tag '{key}'", field="key")

    async def infos_for_experiment(self, experiment_id: int) -> list[RunInfo]:
        """Every run of an experiment, deleted ones too, without params, tags or metrics."""
        query = "SELECT * FROM runs WHERE experiment_id = $1 ORDER BY run_id"
        rows = await self._pool.fetch(query, experiment_id)
        return [info_from_row(row) for row in rows]

    async def list_for_experiment(
        self,
        experiment_id: int,
        *,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        page_token: str | None = None,
    ) -> RunList:
        """Runs of one experiment, newest first, paged by the (start_time, run_id) keyset."""
        start, after_id = decode_token(page_token, int, str) if page_token else (None, None)
        if after_id is not None:
            after_id = parse_run_id(after_id, field="page_token")
        rows = await self._pool.fetch(
            f"""
            SELECT {RUN_COLUMNS} FROM runs r
            WHERE r.experiment_id = $1 AND r.lifecycle_stage = ANY($2::text[])
              AND ($3::bigint IS NULL OR (r.start_time, r.run_id) < ($3, $4::uuid))
            ORDER BY r.start_time DESC, r.run_id DESC
            LIMIT $5
            """,
            experiment_id,
            lifecycles(view_type),
            start,
            after_id,
            max_results + 1,
        )
        runs = [run_from_row(r) for r in rows[:max_results]]
        token = None
        if len(rows) > max_results:
            token = encode_token(runs[-1].info.start_time, runs[-1].info.run_id)
        return RunList(runs=runs, next_page_token=token)
