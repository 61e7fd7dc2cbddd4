"""Dataset inputs of runs (`run_inputs`): what MLflow's `log_input` records, shown on the run page."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import asyncpg
import orjson
from pydantic import BaseModel


class RunInput(BaseModel):
    """One dataset a run used, with the input's tags (e.g. `mlflow.data.context: training`)."""

    name: str
    digest: str
    source_type: str
    source: str
    schema_text: str | None = None
    profile: str | None = None
    tags: dict[str, str] = {}


class DatasetStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(self, run_id: str, inputs: Sequence[RunInput]) -> None:
        """Record the inputs in one statement; the same (name, digest) again replaces its tags."""
        if not inputs:
            return
        await self._pool.execute(
            """
            INSERT INTO run_inputs (run_id, name, digest, source_type, source, schema, profile, tags)
            SELECT $1, d.* FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                       $7::text[], $8::jsonb[]) AS d
            ON CONFLICT (run_id, name, digest) DO UPDATE SET tags = excluded.tags
            """,
            run_id,
            [i.name for i in inputs],
            [i.digest for i in inputs],
            [i.source_type for i in inputs],
            [i.source for i in inputs],
            [i.schema_text for i in inputs],
            [i.profile for i in inputs],
            [orjson.dumps(i.tags).decode() for i in inputs],
        )

    async def of_runs(self, run_ids: Iterable[str]) -> dict[str, list[RunInput]]:
        """Each run's inputs in the order they were first logged (every asked-for run has a list)."""
        ids = list(run_ids)
        found: dict[str, list[RunInput]] = {run_id: [] for run_id in ids}
        if not ids:
            return found
        rows = await self._pool.fetch(
            "SELECT run_id, name, digest, source_type, source, schema, profile, tags::text AS tags"
            " FROM run_inputs WHERE run_id = ANY($1::uuid[]) ORDER BY position",
            ids,
        )
        for row in rows:
            found[row["run_id"]].append(
                RunInput(
                    name=row["name"],
                    digest=row["digest"],
                    source_type=row["source_type"],
                    source=row["source"],
                    schema_text=row["schema"],
                    profile=row["profile"],
                    tags=orjson.loads(row["tags"]),
                )
            )
        return found
