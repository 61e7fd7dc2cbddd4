"""Experiments and their tags."""

from __future__ import annotations

from typing import Any, Literal

import asyncpg

from kiseki.models import Experiment, ExperimentList, ViewType
from kiseki_server.artifacts.paths import location_under
from kiseki_server.auth.policy import Reader
from kiseki_server.clock import now_ms
from kiseki_server.errors import Conflict, InvalidInput, NotFound
from kiseki_server.pagination import decode_token, encode_token
from kiseki_server.search.compiler import Params
from kiseki_server.stores.permissions import readable_experiments

EXPERIMENT_COLUMNS = """
    e.experiment_id, e.name, e.artifact_location, e.lifecycle_stage, e.creation_time, e.last_update_time,
    ARRAY(SELECT ROW(t.key, t.value) FROM experiment_tags t
          WHERE t.experiment_id = e.experiment_id ORDER BY t.key) AS tags
"""

_LIFECYCLES = {
    ViewType.ACTIVE_ONLY: ["active"],
    ViewType.DELETED_ONLY: ["deleted"],
    ViewType.ALL: ["active", "deleted"],
}


def lifecycles(view_type: ViewType) -> list[str]:
    return _LIFECYCLES[view_type]


def parse_experiment_id(value: str, *, field: str = "experiment_id") -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 18:
        raise InvalidInput(f"{field} must be a decimal experiment id, got {value!r}", field=field)
    return int(value)


def experiment_from_row(row: asyncpg.Record) -> Experiment:
    return Experiment(
        experiment_id=str(row["experiment_id"]),
        name=row["name"],
        artifact_location=row["artifact_location"],
        lifecycle_stage=row["lifecycle_stage"],
        creation_time=row["creation_time"],
        last_update_time=row["last_update_time"],
        tags=dict(row["tags"]),
    )


class ExperimentStore:
    def __init__(self, pool: asyncpg.Pool, *, artifact_root: str) -> None:
        self._pool = pool
        self._artifact_root = artifact_root

    async def create(
        self, name: str, *, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> Experiment:
        experiment = await self._insert(name, artifact_location, tags or {}, if_absent=False)
        assert experiment is not None
        return experiment

    async def get_or_create(
        self, name: str, *, artifact_location: str | None = None, tags: dict[str, str] | None = None
    ) -> tuple[Experiment, bool]:
        """The active experiment named `name`, created if there is none; True when this call created it.

        Atomic under races: concurrent callers wait on the unique index and then read the winner's row.
        """
        for _ in range(5):
            created = await self._insert(name, artifact_location, tags or {}, if_absent=True)
            if created is not None:
                return created, True
            existing = await self.find_by_name(name)
            if existing is not None:
                return existing, False
            # The winner's experiment was deleted between our insert and our read: try again.
        raise Conflict(
            f"experiment '{name}' is being created and deleted concurrently; try again", field="name"
        )

    async def _insert(
        self, name: str, artifact_location: str | None, tags: dict[str, str], *, if_absent: bool
    ) -> Experiment | None:
        self._check_location(artifact_location)
        on_conflict = "ON CONFLICT (name) WHERE lifecycle_stage = 'active' DO NOTHING" if if_absent else ""
        now = now_ms()
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                experiment_id = await conn.fetchval(
                    f"""
                    WITH id AS (SELECT nextval(pg_get_serial_sequence('experiments', 'experiment_id')) AS id)
                    INSERT INTO experiments (experiment_id, name, artifact_location, creation_time,
                                             last_update_time)
                    SELECT id, $1, coalesce($2, $3 || '/' || id), $4, $4 FROM id
                    {on_conflict}
                    RETURNING experiment_id
                    """,
                    name,
                    artifact_location,
                    self._artifact_root,
                    now,
                )
            except asyncpg.UniqueViolationError:
                raise Conflict(f"an active experiment named '{name}' already exists", field="name") from None
            if experiment_id is None:
                return None
            if tags:
                await conn.execute(
                    "INSERT INTO experiment_tags (experiment_id, key, value)"
                    " SELECT $1, k, v FROM unnest($2::text[], $3::text[]) AS t(k, v)",
                    experiment_id,
                    list(tags),
                    list(tags.values()),
                )
            return await self._fetch(conn, experiment_id)

    def _check_location(self, location: str | None) -> None:
        """The service's artifact root is carved up by experiment id; a custom location inside it could
        overlap another experiment's runs (and be purged with them). "Inside" is decided after the
        normalisation the artifact stores address storage with (`//`, `.`, `..`, `localhost`, escapes)."""
        root = self._artifact_root
        if location is not None and location_under(location, root) is not None:
            raise InvalidInput(
                f"artifact_location must not lie inside the service's artifact root {root}; leave it unset "
                f"to get {root}/<experiment_id>",
                field="artifact_location",
            )

    async def _fetch(self, conn: Any, experiment_id: int) -> Experiment | None:
        row = await conn.fetchrow(
            f"SELECT {EXPERIMENT_COLUMNS} FROM experiments e WHERE e.experiment_id = $1", experiment_id
        )
        return experiment_from_row(row) if row else None

    async def get(self, experiment_id: int) -> Experiment:
        experiment = await self._fetch(self._pool, experiment_id)
        if experiment is None:
            raise NotFound(f"experiment {experiment_id} not found", field="experiment_id")
        return experiment

    async def find_by_name(self, name: str) -> Experiment | None:
        row = await self._pool.fetchrow(
            f"SELECT {EXPERIMENT_COLUMNS} FROM experiments e"
            " WHERE e.name = $1 AND e.lifecycle_stage = 'active'",
            name,
        )
        return experiment_from_row(row) if row else None

    async def get_active(self, experiment_id: int) -> Experiment:
        """The experiment, which must be active: runs are not created or logged under deleted ones."""
        experiment = await self.get(experiment_id)
        if experiment.lifecycle_stage != "active":
            raise Conflict(f"experiment {experiment_id} is deleted; restore it first", field="experiment_id")
        return experiment

    async def search(
        self,
        *,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        name_like: str | None = None,
        max_results: int = 1000,
        page_token: str | None = None,
        reader: Reader | None = None,
    ) -> ExperimentList:
        """Newest first, of those `reader` may read (all when None); `name_like` is a case-insensitive
        SQL LIKE pattern (`%` any text, `_` one char)."""
        after = decode_token(page_token, int)[0] if page_token else None
        params = Params([lifecycles(view_type), name_like, after, max_results + 1])
        readable = readable_experiments("e.experiment_id", reader, params)
        rows = await self._pool.fetch(
            f"""
            SELECT {EXPERIMENT_COLUMNS} FROM experiments e
            WHERE e.lifecycle_stage = ANY($1::text[])
              AND ($2::text IS NULL OR e.name ILIKE $2)
              AND ($3::bigint IS NULL OR e.experiment_id < $3)
              AND {readable}
            ORDER BY e.experiment_id DESC
            LIMIT $4
            """,
            *params.values,
        )
        experiments = [experiment_from_row(r) for r in rows[:max_results]]
        token = encode_token(int(experiments[-1].experiment_id)) if len(rows) > max_results else None
        return ExperimentList(experiments=experiments, next_page_token=token)

    async def rename(self, experiment_id: int, name: str) -> Experiment:
        try:
            return await self._update(experiment_id, "name = $2", name)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"an active experiment named '{name}' already exists", field="name") from None

    async def set_lifecycle(self, experiment_id: int, stage: str) -> Experiment:
        try:
            return await self._update(experiment_id, "lifecycle_stage = $2", stage)
        except asyncpg.UniqueViolationError:
            experiment = await self.get(experiment_id)
            raise Conflict(
                f"cannot restore experiment {experiment_id}: its name '{experiment.name}' is taken by "
                "another active experiment; rename one of them first",
                field="experiment_id",
            ) from None

    async def _update(
        self, experiment_id: int, assignment: Literal["name = $2", "lifecycle_stage = $2"], value: str
    ) -> Experiment:
        """One column change (a fixed assignment from this module, never user text), in one round trip."""
        row = await self._pool.fetchrow(
            f"UPDATE experiments e SET {assignment}, last_update_time = $3 WHERE e.experiment_id = $1"
            f" RETURNING {EXPERIMENT_COLUMNS}",
            experiment_id,
            value,
            now_ms(),
        )
        if row is None:
            raise NotFound(f"experiment {experiment_id} not found", field="experiment_id")
        return experiment_from_row(row)

    async def set_tag(self, experiment_id: int, key: str, value: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._touch(conn, experiment_id)
            await conn.execute(
                """
                INSERT INTO experiment_tags (experiment_id, key, value) VALUES ($1, $2, $3)
                ON CONFLICT (experiment_id, key) DO UPDATE SET value = excluded.value
                """,
                experiment_id,
                key,
                value,
            )

    async def delete_tag(self, experiment_id: int, key: str) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await self._touch(conn, experiment_id)
            status = await conn.execute(
                "DELETE FROM experiment_tags WHERE experiment_id = $1 AND key = $2", experiment_id, key
            )
            if status == "DELETE 0":
                raise NotFound(f"experiment {experiment_id} has no tag '{key}'", field="key")

    async def _touch(self, conn: Any, experiment_id: int) -> None:
        status = await conn.execute(
            "UPDATE experiments SET last_update_time = $2 WHERE experiment_id = $1", experiment_id, now_ms()
        )
        self._check_found(status, experiment_id)

    @staticmethod
    def _check_found(status: str, experiment_id: int) -> None:
        if status.endswith(" 0"):
            raise NotFound(f"experiment {experiment_id} not found", field="experiment_id")
