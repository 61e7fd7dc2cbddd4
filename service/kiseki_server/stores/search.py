"""Run and experiment search: filter + order + keyset pages, one SQL statement per segment.

The statement is assembled from fixed fragments (search.compiler, search.ordering); keys, values and
cursor values are always `$n` parameters. See search.ordering for why a sort has segments.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from kiseki.models import Experiment, ExperimentList, ExperimentSearch, Run, RunList, RunSearch, ViewType
from kiseki_server.auth.policy import Reader
from kiseki_server.errors import InvalidInput, NotFound
from kiseki_server.pagination import decode_token, encode_token
from kiseki_server.search import ordering
from kiseki_server.search.ast import Expr, Identifier, OrderKey
from kiseki_server.search.compiler import EXPERIMENTS, RUNS, Entity, Params, compile_filter
from kiseki_server.search.parser import parse_filter, parse_order_by
from kiseki_server.stores.experiments import EXPERIMENT_COLUMNS, experiment_from_row, lifecycles
from kiseki_server.stores.permissions import readable_experiments
from kiseki_server.stores.runs import RUN_COLUMNS, run_from_row

_ACTIVE_EXPERIMENTS = (
    "r.experiment_id IN (SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'active')"
)
_NEWEST_RUNS = [OrderKey(Identifier("attribute", "start_time", "start_time", 0), descending=True)]


@dataclass(frozen=True, slots=True)
class Explained:
    """A statement a search ran, its parameters, and its EXPLAIN (ANALYZE, BUFFERS) plan."""

    sql: str
    args: list[object]
    plan: str


@dataclass(frozen=True, slots=True)
class _Search:
    """One search, parsed and checked, independent of the page."""

    entity: Entity
    source: str
    """The FROM item: table and alias."""
    columns: str
    """Columns of a result row, as the row builder (run_from_row, …) expects them."""
    scope: Callable[[Params], str]
    """The experiments searched, as a condition."""
    where: Expr | None
    keys: list[ordering.SortKey]
    fingerprint: str


def _whose(reader: Reader | None) -> int | None:
    """Page tokens are tied to the caller too: one user's token is not another's page."""
    return None if reader is None else reader.user_id


def _fingerprint(*parts: object) -> str:
    """Ties a page token to the search it came from: reusing it with another filter is an error."""
    return hashlib.blake2b(orjson.dumps(parts), digest_size=6).hexdigest()


def _parse(
    entity: Entity, filter_text: str, order_by: Sequence[str], default: list[OrderKey]
) -> tuple[Expr | None, list[ordering.SortKey]]:
    where = parse_filter(filter_text)
    compile_filter(where, entity, Params())  # semantic errors now, whatever the page
    order = [parse_order_by(text, field=f"order_by.{i}") for i, text in enumerate(order_by)] or default
    return where, ordering.resolve(order, entity)


async def _page(
    conn: Any,
    search: _Search,
    view_type: ViewType,
    max_results: int,
    page_token: str | None,
    explain: list[Explained] | None,
) -> tuple[list[asyncpg.Record], str | None]:
    """Up to max_results rows after the token's position, and the token of the next page."""
    kinds = ordering.segments(search.keys[0] if search.keys else None)
    start, cursor = 0, None
    if page_token:
        fingerprint, start, cursor = decode_token(page_token, str, int, list)
        if fingerprint != search.fingerprint:
            raise InvalidInput(
                "page_token belongs to a different search (filter, order_by, scope or view_type changed)",
                field="page_token",
            )
        if not 0 <= start < len(kinds):
            raise InvalidInput("page_token is not a token this search returned", field="page_token")
    rows: list[tuple[int, asyncpg.Record]] = []
    last_components: list[list[ordering.Component]] = []
    for index in range(start, len(kinds)):
        need = max_results + 1 - len(rows)
        if need <= 0:
            break
        params = Params()
        segment = ordering.segment_query(search.keys, kinds[index], search.entity, params)
        last_components.append(segment.components)
        predicate = compile_filter(search.where, search.entity, params, segment.known)
        if predicate is False:
            continue
        lifecycle = params.add(lifecycles(view_type), "text[]")
        conditions = [segment.where, f"{search.entity.alias}.lifecycle_stage = ANY({lifecycle})"]
        conditions.append(search.scope(params))
        if predicate is not True:
            conditions.append(str(predicate))
        if index == start and cursor is not None:
            typed = ordering.check_cursor(cursor, segment.components)
            conditions.append(ordering.after(segment.components, typed, params, search.entity.id_type))
        sort_columns = ", ".join(f"{c.sql} AS _s{i}" for i, c in enumerate(segment.components))
        sql = (
            f"SELECT {search.columns}, {sort_columns}\nFROM {search.source}\n{segment.joins}\n"
            f"WHERE {' AND '.join(conditions)}\n"
            f"ORDER BY {ordering.order_clause(segment.components)}\n"
            f"LIMIT {params.add(need)}"
        )
        rows.extend((index, row) for row in await conn.fetch(sql, *params.values))
        if explain is not None:
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *params.values)
            explain.append(Explained(sql, params.values, "\n".join(r[0] for r in plan)))
    token = None
    if len(rows) > max_results:
        index, row = rows[max_results - 1]
        components = last_components[index - start]
        token = encode_token(search.fingerprint, index, ordering.cursor_of(row, components))
    return [row for _, row in rows[:max_results]], token


class SearchStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def search_runs(
        self,
        request: RunSearch,
        *,
        reader: Reader | None = None,
        explain: list[Explained] | None = None,
    ) -> RunList:
        """Runs in `request.experiment_ids` (every active experiment when omitted) matching the filter,
        within the experiments `reader` may read (all when None).

        With `explain`, each statement run is appended to it with its EXPLAIN ANALYZE plan (for
        benchmarks and for finding out why a search is slow).
        """
        where, keys = _parse(RUNS, request.filter, request.order_by, _NEWEST_RUNS)
        ids = [int(i) for i in request.experiment_ids] if request.experiment_ids is not None else None

        def scope(params: Params) -> str:
            if ids is None:
                chosen = _ACTIVE_EXPERIMENTS
            elif len(ids) == 1:
                chosen = f"r.experiment_id = {params.add(ids[0], 'bigint')}"
            else:
                chosen = f"r.experiment_id = ANY({params.add(ids, 'bigint[]')})"
            if reader is None:
                return chosen
            return f"{chosen} AND {readable_experiments('r.experiment_id', reader, params)}"

        search = _Search(
            entity=RUNS,
            source="runs r",
            columns=RUN_COLUMNS,
            scope=scope,
            where=where,
            keys=keys,
            fingerprint=_fingerprint(
                "runs", request.filter, request.order_by, ids, request.view_type, _whose(reader)
            ),
        )
        async with self._pool.acquire() as conn:
            if ids is not None:
                found = await conn.fetch(
                    "SELECT experiment_id FROM experiments WHERE experiment_id = ANY($1::bigint[])", ids
                )
                missing = sorted(set(ids) - {r["experiment_id"] for r in found})
                if missing:
                    raise NotFound(f"experiment {missing[0]} not found", field="experiment_ids")
            rows, token = await _page(
                conn, search, request.view_type, request.max_results, request.page_token, explain
            )
        runs: list[Run] = [run_from_row(row) for row in rows]
        return RunList(runs=runs, next_page_token=token)

    async def search_experiments(
        self, request: ExperimentSearch, *, reader: Reader | None = None
    ) -> ExperimentList:
        """Experiments matching the filter that `reader` may read (all when None); newest first unless
        order_by says otherwise."""
        where, keys = _parse(EXPERIMENTS, request.filter, request.order_by, [])
        search = _Search(
            entity=EXPERIMENTS,
            source="experiments e",
            columns=EXPERIMENT_COLUMNS,
            scope=lambda params: readable_experiments("e.experiment_id", reader, params),
            where=where,
            keys=keys,
            fingerprint=_fingerprint(
                "experiments", request.filter, request.order_by, request.view_type, _whose(reader)
            ),
        )
        async with self._pool.acquire() as conn:
            rows, token = await _page(
                conn, search, request.view_type, request.max_results, request.page_token, None
            )
        experiments: list[Experiment] = [experiment_from_row(row) for row in rows]
        return ExperimentList(experiments=experiments, next_page_token=token)
