"""Batched logging (params, tags, metric points) and metric history reads.

A batch is applied in one transaction, claimed first by its batch id so that a retry is acknowledged
without being applied again. Metric points never become Python objects: each key's points are packed
into one chunk (see `metric_codec`) and written with the latest-value upsert in a single statement.
Row locks are always taken in key order, so concurrent batches on one run cannot deadlock.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import numpy as np

from kiseki.models import LogBatch, LogBatchResult
from kiseki_server import metric_codec
from kiseki_server.clock import now_ms
from kiseki_server.errors import Conflict, NotFound
from kiseki_server.metric_codec import Points
from kiseki_server.pagination import decode_token, encode_token

_APPLY_METRICS = """
WITH run AS (
    SELECT lifecycle_stage FROM runs WHERE run_id = $1
), claim AS (
    INSERT INTO applied_batches (run_id, batch_id, applied_at)
    SELECT $1, $2, $3 FROM run WHERE lifecycle_stage = 'active'
    ON CONFLICT DO NOTHING
    RETURNING 1
), chunks AS (
    INSERT INTO metric_chunks (run_id, key, n_points, min_step, max_step, data)
    SELECT $1, c.key, c.n, c.lo, c.hi, c.data
    FROM unnest($4::text[], $5::int[], $6::bigint[], $7::bigint[], $8::bytea[]) AS c(key, n, lo, hi, data)
    WHERE EXISTS (SELECT FROM claim)
), latest AS (
    INSERT INTO latest_metrics AS m (run_id, key, value, step, timestamp)
    SELECT $1, l.key, l.value, l.step, l.ts
    FROM unnest($4::text[], $9::float8[], $10::bigint[], $11::bigint[]) AS l(key, value, step, ts)
    WHERE EXISTS (SELECT FROM claim)
    ORDER BY l.key
    ON CONFLICT (run_id, key) DO UPDATE
        SET value = excluded.value, step = excluded.step, timestamp = excluded.timestamp
        WHERE (excluded.step, excluded.timestamp, excluded.value) > (m.step, m.timestamp, m.value)
)
SELECT (SELECT lifecycle_stage FROM run) AS lifecycle_stage, EXISTS (SELECT FROM claim) AS claimed
"""

_INSERT_PARAMS = """
INSERT INTO params (run_id, key, value)
SELECT $1, p.key, p.value FROM unnest($2::text[], $3::text[]) AS p(key, value) ORDER BY p.key
ON CONFLICT (run_id, key) DO NOTHING
"""

_CHANGED_PARAM = """
SELECT p.key, p.value AS old, n.value AS new
FROM params p JOIN unnest($2::text[], $3::text[]) AS n(key, value) ON p.key = n.key
WHERE p.run_id = $1 AND p.value <> n.value
ORDER BY p.key LIMIT 1
"""

_UPSERT_TAGS = """
INSERT INTO tags (run_id, key, value)
SELECT $1, t.key, t.value FROM unnest($2::text[], $3::text[]) AS t(key, value) ORDER BY t.key
ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value
"""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    key: str
    points: Points
    next_page_token: str | None


def _group_points(batch: LogBatch, now: int) -> dict[str, Points]:
    """Every key's points as arrays, from both the row and the columnar form."""
    groups: dict[str, list[Points]] = {}
    for key, col in batch.metric_columns.items():
        if not col.values:
            continue
        n = len(col.values)
        groups.setdefault(key, []).append(
            Points(
                steps=np.asarray(col.steps, dtype=np.int64)
                if col.steps is not None
                else np.zeros(n, np.int64),
                timestamps=(
                    np.asarray(col.timestamps, dtype=np.int64)
                    if col.timestamps is not None
                    else np.full(n, now, np.int64)
                ),
                values=np.asarray(col.values, dtype=np.float64),
            )
        )
    if batch.metrics:
        rows = batch.metrics
        keys = np.array([m.key for m in rows], dtype=object)
        steps = np.array([m.step for m in rows], dtype=np.int64)
        stamps = np.array([now if m.timestamp is None else m.timestamp for m in rows], dtype=np.int64)
        values = np.array([m.value for m in rows], dtype=np.float64)
        for key in dict.fromkeys(keys.tolist()):
            mask = keys == key
            groups.setdefault(key, []).append(Points(steps[mask], stamps[mask], values[mask]))
    return {
        key: parts[0]
        if len(parts) == 1
        else Points(
            np.concatenate([p.steps for p in parts]),
            np.concatenate([p.timestamps for p in parts]),
            np.concatenate([p.values for p in parts]),
        )
        for key, parts in groups.items()
    }


class MetricStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def log_batch(self, run_id: str, batch: LogBatch) -> LogBatchResult:
        now = now_ms()
        groups = _group_points(batch, now)
        keys = sorted(groups)
        chunks = [groups[k] for k in keys]
        latest = [_point(c, metric_codec.latest_index(c)) for c in chunks]
        args = (
            run_id,
            str(batch.batch_id or uuid.uuid4()),
            now,
            keys,
            [len(c) for c in chunks],
            [int(c.steps.min()) for c in chunks],
            [int(c.steps.max()) for c in chunks],
            [metric_codec.encode(c) for c in chunks],
            [v for v, _, _ in latest],
            [s for _, s, _ in latest],
            [t for _, _, t in latest],
        )
        n_points = sum(len(c) for c in chunks)
        result = LogBatchResult(applied=True, points=n_points)
        params = sorted({p.key: p.value for p in batch.params}.items())
        tags = sorted({t.key: t.value for t in batch.tags}.items())
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_APPLY_METRICS, *args)
            if row["lifecycle_stage"] is None:
                raise NotFound(f"run {run_id} not found", field="run_id")
            if row["lifecycle_stage"] != "active":
                raise Conflict(f"run {run_id} is deleted; restore it to log to it", field="run_id")
            if not row["claimed"]:
                return result.model_copy(update={"applied": False})
            if params:
                names, values = [k for k, _ in params], [v for _, v in params]
                await conn.execute(_INSERT_PARAMS, run_id, names, values)
                changed = await conn.fetchrow(_CHANGED_PARAM, run_id, names, values)
                if changed is not None:
                    raise Conflict(
                        f"param '{changed['key']}' is already logged with value {changed['old']!r}; "
                        f"params are immutable and cannot be changed to {changed['new']!r}",
                        field=f"params.{changed['key']}",
                    )
            if tags:
                await conn.execute(_UPSERT_TAGS, run_id, [k for k, _ in tags], [v for _, v in tags])
        return result

    async def _points(self, run_id: str, key: str, min_step: int | None) -> Points:
        """All points of a key (optionally only from chunks reaching `min_step`), in (step, timestamp,
        arrival) order."""
        rows = await self._pool.fetch(
            """
            SELECT data FROM metric_chunks
            WHERE run_id = $1 AND key = $2 AND ($3::bigint IS NULL OR max_step >= $3)
            ORDER BY chunk_id
            """,
            run_id,
            key,
            min_step,
        )
        if not rows:
            return Points(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))
        decoded = [metric_codec.decode(r["data"]) for r in rows]
        points = Points(
            np.concatenate([p.steps for p in decoded]),
            np.concatenate([p.timestamps for p in decoded]),
            np.concatenate([p.values for p in decoded]),
        )
        return _sorted(points)

    async def history(
        self, run_id: str, key: str, *, max_results: int, page_token: str | None = None
    ) -> HistoryPage:
        """A page of a metric's points. The token holds the last point's (step, timestamp) and how many
        points with exactly that (step, timestamp) were already returned, so pages are exact even with
        duplicate points and while new points arrive."""
        after: tuple[int, int, int] | None = decode_token(page_token, int, int, int) if page_token else None
        points = await self._points(run_id, key, after[0] if after else None)
        start = 0
        if after is not None:
            step, ts, seen = after
            start = min(_first_at(points, step, ts) + seen, len(points))
        end = min(start + max_results, len(points))
        page = Points(points.steps[start:end], points.timestamps[start:end], points.values[start:end])
        token = None
        if end < len(points):
            last_step, last_ts = int(page.steps[-1]), int(page.timestamps[-1])
            token = encode_token(last_step, last_ts, end - _first_at(points, last_step, last_ts))
        return HistoryPage(key, page, token)

    async def downsampled(self, run_id: str, key: str, *, max_points: int) -> Points:
        return downsample(await self._points(run_id, key, None), max_points)

    async def downsampled_many(
        self, series: list[tuple[str, str]], *, max_points: int
    ) -> dict[tuple[str, str], Points]:
        """`downsampled` for many (run_id, key) pairs in one query (charts of a run or a comparison).
        Pairs without points are left out."""
        if not series:
            return {}
        rows = await self._pool.fetch(
            """
            SELECT c.run_id, c.key, c.data
            FROM metric_chunks c JOIN unnest($1::uuid[], $2::text[]) AS s(run_id, key)
                 ON c.run_id = s.run_id AND c.key = s.key
            ORDER BY c.run_id, c.key, c.chunk_id
            """,
            [run_id for run_id, _ in series],
            [key for _, key in series],
        )
        chunks: dict[tuple[str, str], list[Points]] = {}
        for row in rows:
            chunks.setdefault((row["run_id"], row["key"]), []).append(metric_codec.decode(row["data"]))
        return {
            pair: downsample(
                _sorted(
                    Points(
                        np.concatenate([p.steps for p in parts]),
                        np.concatenate([p.timestamps for p in parts]),
                        np.concatenate([p.values for p in parts]),
                    )
                ),
                max_points,
            )
            for pair, parts in chunks.items()
        }


def _point(points: Points, i: int) -> tuple[float, int, int]:
    return float(points.values[i]), int(points.steps[i]), int(points.timestamps[i])


def _sorted(points: Points) -> Points:
    steps, stamps = points.steps, points.timestamps
    ordered = bool(
        np.all((steps[1:] > steps[:-1]) | ((steps[1:] == steps[:-1]) & (stamps[1:] >= stamps[:-1])))
    )
    if ordered:
        return points
    order = np.lexsort((stamps, steps))  # stable: equal (step, timestamp) points keep arrival order
    return Points(steps[order], stamps[order], points.values[order])


def _first_at(points: Points, step: int, ts: int) -> int:
    """Index of the first point at or after (step, ts) in sorted points."""
    lo = int(np.searchsorted(points.steps, step, side="left"))
    hi = int(np.searchsorted(points.steps, step, side="right"))
    return lo + int(np.searchsorted(points.timestamps[lo:hi], ts, side="left"))


def downsample(points: Points, max_points: int) -> Points:
    """At most `max_points` points that keep the curve's shape: the first and the last point, and the
    minimum and maximum of each of `(max_points - 2) / 2` equal-count buckets between them."""
    n = len(points)
    if n <= max_points:
        return points
    buckets = max(1, (max_points - 2) // 2)
    inner = np.arange(1, n - 1)
    bucket = (inner - 1) * buckets // (n - 2)
    # Within each bucket, sort by value: the bucket's first entry is its min, its last its max.
    order = np.lexsort((points.values[inner], bucket))
    grouped = bucket[order]
    firsts = np.searchsorted(grouped, np.arange(buckets), side="left")
    lasts = np.searchsorted(grouped, np.arange(buckets), side="right") - 1
    keep = np.unique(np.concatenate(([0], inner[order[firsts]], inner[order[lasts]], [n - 1])))
    return Points(points.steps[keep], points.timestamps[keep], points.values[keep])
