"""Read-only queries for the run browser: experiment summaries, common keys, runs by id, run families.

Each is one set-based statement whose cost is bounded by what a page shows, not by how many runs an
experiment holds (except the run counts of `experiment_summaries`, one index range per experiment).
Queries that can reach beyond the experiment a page is about take `reader`: what that user may not read
is left out (None: everything).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import asyncpg

from kiseki.models import Run, ViewType
from kiseki_server.auth.policy import Reader
from kiseki_server.errors import NotFound
from kiseki_server.search.compiler import Params
from kiseki_server.stores.experiments import lifecycles
from kiseki_server.stores.permissions import readable_experiments
from kiseki_server.stores.runs import RUN_COLUMNS, run_from_row

KEY_SAMPLE = 1000
"""Newest runs whose keys decide an experiment's default columns."""


@dataclass(frozen=True, slots=True)
class ExperimentSummary:
    active_runs: int
    deleted_runs: int
    last_activity: int
    """Epoch ms of the latest experiment change, run start or run end."""


@dataclass(frozen=True, slots=True)
class KeyCount:
    kind: Literal["param", "metric"]
    key: str
    runs: int
    """How many of the sampled runs have the key."""


@dataclass(frozen=True, slots=True)
class RunRef:
    """Enough of a run to link to it."""

    run_id: str
    run_name: str
    status: str
    start_time: int
    end_time: int | None
    lifecycle_stage: str


@dataclass(frozen=True, slots=True)
class Family:
    parent: RunRef | None
    children: list[RunRef]
    more_children: bool


_SUMMARIES = """
SELECT e.experiment_id, s.active_runs, s.deleted_runs,
       greatest(e.last_update_time, s.last_start, s.last_end) AS last_activity
FROM experiments e
CROSS JOIN LATERAL (
    SELECT count(*) FILTER (WHERE r.lifecycle_stage = 'active') AS active_runs,
           count(*) FILTER (WHERE r.lifecycle_stage = 'deleted') AS deleted_runs,
           max(r.start_time) AS last_start, max(r.end_time) AS last_end
    FROM runs r WHERE r.experiment_id = e.experiment_id
) s
WHERE e.experiment_id = ANY($1::bigint[]) AND {readable}
"""

_COMMON_KEYS = """
WITH sample AS (
    SELECT run_id FROM runs
    WHERE experiment_id = $1 AND lifecycle_stage = ANY($2::text[])
    ORDER BY start_time DESC, run_id DESC
    LIMIT $3
)
(SELECT 'param' AS kind, p.key, count(*) AS runs FROM params p JOIN sample USING (run_id)
 GROUP BY p.key ORDER BY runs DESC, p.key LIMIT $4)
UNION ALL
(SELECT 'metric', m.key, count(*) AS runs FROM latest_metrics m JOIN sample USING (run_id)
 GROUP BY m.key ORDER BY runs DESC, m.key LIMIT $4)
"""

_REF = "run_id, run_name, status, start_time, end_time, lifecycle_stage"
_FAMILY = f"""
(SELECT 'parent' AS relation, {_REF} FROM runs WHERE run_id = $2 AND {{readable}})
UNION ALL
(SELECT 'child', {_REF} FROM runs WHERE parent_run_id = $1 AND {{readable}}
 ORDER BY start_time DESC, run_id DESC LIMIT $3)
"""
"""A parent or child run may sit in another experiment (MLflow's parentRunId tag can name any run)."""


def _ref(row: asyncpg.Record) -> RunRef:
    return RunRef(
        run_id=row["run_id"],
        run_name=row["run_name"],
        status=row["status"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        lifecycle_stage=row["lifecycle_stage"],
    )


class BrowseStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def experiment_summaries(
        self, experiment_ids: Sequence[int], *, reader: Reader | None = None
    ) -> dict[int, ExperimentSummary]:
        """Run counts and last activity of each experiment (ids that do not exist, or that `reader` may
        not read, are left out)."""
        if not experiment_ids:
            return {}
        params = Params([list(experiment_ids)])
        sql = _SUMMARIES.format(readable=readable_experiments("e.experiment_id", reader, params))
        rows = await self._pool.fetch(sql, *params.values)
        return {
            r["experiment_id"]: ExperimentSummary(r["active_runs"], r["deleted_runs"], r["last_activity"])
            for r in rows
        }

    async def common_keys(
        self,
        experiment_id: int,
        *,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        sample: int = KEY_SAMPLE,
        limit: int = 200,
    ) -> list[KeyCount]:
        """Param and metric keys of the experiment's newest `sample` runs, most common first (at most
        `limit` of each kind). Sampling keeps this cheap however many runs the experiment holds."""
        rows = await self._pool.fetch(_COMMON_KEYS, experiment_id, lifecycles(view_type), sample, limit)
        return [KeyCount(r["kind"], r["key"], r["runs"]) for r in rows]

    async def runs(self, run_ids: Sequence[str], *, reader: Reader | None = None) -> list[Run]:
        """The runs with these (canonical 32-hex) ids, in the order asked; 404 naming the first missing
        (a run `reader` may not read counts as missing)."""
        params = Params([list(run_ids)])
        readable = readable_experiments("r.experiment_id", reader, params)
        rows = await self._pool.fetch(
            f"SELECT {RUN_COLUMNS} FROM runs r WHERE r.run_id = ANY($1::uuid[]) AND {readable}",
            *params.values,
        )
        found = {row["run_id"]: run_from_row(row) for row in rows}
        for run_id in run_ids:
            if run_id not in found:
                raise NotFound(f"run {run_id} not found", field="runs")
        return [found[run_id] for run_id in run_ids]

    async def family(
        self,
        run_id: str,
        parent_run_id: str | None,
        *,
        max_children: int = 100,
        reader: Reader | None = None,
    ) -> Family:
        """A run's parent (when it has one) and its newest `max_children` child runs, of those `reader`
        may read."""
        params = Params([run_id, parent_run_id, max_children + 1])
        readable = readable_experiments("experiment_id", reader, params)
        rows = await self._pool.fetch(_FAMILY.format(readable=readable), *params.values)
        parent = next((_ref(r) for r in rows if r["relation"] == "parent"), None)
        children = [_ref(r) for r in rows if r["relation"] == "child"]
        return Family(parent, children[:max_children], len(children) > max_children)
