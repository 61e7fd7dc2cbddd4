"""Batched logging (params, tags, metric points) and metric history reads.

A batch is applied in one transaction, claimed first by its batch id so that a retry is acknowledged
without being applied again. Metric points never become Python objects: each key's points are packed
into one chunk (see `metric_codec`) and written with the latest-value upsert in a single statement.
Row locks are always taken in key order, so concurrent batches on one run cannot deadlock.

CPU-heavy work is bounded: packing costs O(n log n) whatever the number of keys, a history page decodes
only the chunks it needs (at most `DECODE_BUDGET` points where that is enough for one point), and work on
many points runs in a thread (`MetricStore.off_loop`) so other requests keep their latency.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
import numpy as np

from kiseki.models import LogBatch, LogBatchResult, Metric
from kiseki_server import metric_codec
from kiseki_server.clock import now_ms
from kiseki_server.errors import Conflict, InvalidInput, NotFound
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


OFFLOAD_POINTS = 50_000
"""Work on at least this many points (packing a batch, decoding a history, writing its JSON) runs in a
thread, so the event loop keeps serving other requests; smaller work stays inline, where a thread hop
would cost more than it saves."""
HEAVY_CONCURRENCY = 2
"""Offloaded metric work running at once per process (one per core): more would only share the CPU."""
DECODE_BUDGET = 2_000_000
"""Points one history page request decodes at most, unless fewer leave it unable to return even one
point (a key whose chunks all overlap on one step must be read whole to order it)."""

INDEX_ROWS = 10_000
"""Chunk index rows a history read fetches at a time (a key logged point by point has a chunk per point)."""

_CHUNK_INDEX = """
SELECT chunk_id, n_points, min_step, CASE WHEN before < $4 THEN data END AS data
FROM (
    SELECT chunk_id, n_points, min_step, data,
           sum(n_points) OVER (ORDER BY min_step, chunk_id ROWS UNBOUNDED PRECEDING) - n_points AS before
    FROM metric_chunks
    WHERE run_id = $1 AND key = $2 AND ($3::bigint IS NULL OR max_step >= $3)
) c
ORDER BY min_step, chunk_id
LIMIT $5
"""
"""The first chunks that may hold points at or after a cursor's step, in min_step order, with the data of
those up to the one that brings the points to $4 (the usual page needs no other query)."""

_MORE_INDEX = """
SELECT chunk_id, n_points, min_step FROM metric_chunks
WHERE run_id = $1 AND key = $2 AND ($3::bigint IS NULL OR max_step >= $3) AND (min_step, chunk_id) > ($4, $5)
ORDER BY min_step, chunk_id
LIMIT $6
"""

_CHUNK_DATA = """
SELECT chunk_id, data FROM metric_chunks WHERE run_id = $1 AND key = $2 AND chunk_id = ANY($3::bigint[])
"""

_EMPTY = Points(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HistoryPage:
    key: str
    points: Points
    next_page_token: str | None


@dataclass(frozen=True, slots=True)
class _Packed:
    """A batch's metric points as one row per key, keys in sorted order (the order rows are locked in)."""

    keys: list[str]
    sizes: list[int]
    min_steps: list[int]
    max_steps: list[int]
    chunks: list[bytes]
    values: list[float]
    steps: list[int]
    timestamps: list[int]


def _pack(batch: LogBatch, now: int) -> _Packed:
    """Every key's points, from both the row and the columnar form, packed into one chunk per key.

    Points of one key keep their order: the columnar form's first, then the rows' in arrival order.
    Grouping is one stable sort by key and the per-key work is vectorised (`metric_codec.encode_many`),
    so the cost is O(n log n) in points whatever the number of distinct keys."""
    codes: dict[str, int] = {}
    segment_codes: list[int] = []
    segment_sizes: list[int] = []
    steps: list[int] = []
    stamps: list[int] = []
    values: list[float] = []
    for key, col in batch.metric_columns.items():
        n = len(col.values)
        if not n:
            continue
        segment_codes.append(codes.setdefault(key, len(codes)))
        segment_sizes.append(n)
        values += col.values
        steps += col.steps if col.steps is not None else itertools.repeat(0, n)
        stamps += col.timestamps if col.timestamps is not None else itertools.repeat(now, n)
    rows = batch.metrics
    row_codes = [codes.setdefault(m.key, len(codes)) for m in rows]
    steps += [m.step for m in rows]
    stamps += [now if m.timestamp is None else m.timestamp for m in rows]
    values += [m.value for m in rows]
    names = list(codes)
    if not names:
        return _Packed([], [], [], [], [], [], [], [])
    point_codes = np.concatenate(
        (np.repeat(np.array(segment_codes, np.int64), segment_sizes), np.array(row_codes, np.int64))
    )
    by_name = sorted(range(len(names)), key=names.__getitem__)
    rank = np.empty(len(names), np.int64)
    rank[by_name] = np.arange(len(names))
    point_ranks = rank[point_codes]
    order = np.argsort(point_ranks, kind="stable")  # stable: a key's points keep their order
    bounds = np.searchsorted(point_ranks[order], np.arange(len(names) + 1), side="left").astype(np.int64)
    points = Points(
        np.array(steps, np.int64)[order],
        np.array(stamps, np.int64)[order],
        np.array(values, np.float64)[order],
    )
    latest = metric_codec.latest_indices(points, bounds)
    return _Packed(
        keys=[names[i] for i in by_name],
        sizes=np.diff(bounds).tolist(),
        min_steps=np.minimum.reduceat(points.steps, bounds[:-1]).tolist(),
        max_steps=np.maximum.reduceat(points.steps, bounds[:-1]).tolist(),
        chunks=metric_codec.encode_many(points, bounds),
        values=points.values[latest].tolist(),
        steps=points.steps[latest].tolist(),
        timestamps=points.timestamps[latest].tolist(),
    )


def _batch_points(batch: LogBatch) -> int:
    return len(batch.metrics) + sum(len(c.values) for c in batch.metric_columns.values())


def _cursor(page_token: str | None) -> tuple[int, int, int] | None:
    """(step, timestamp, points at exactly that step and timestamp already returned) of a history token."""
    if not page_token:
        return None
    step, ts, seen = decode_token(page_token, int, int, int)
    if seen < 1:
        raise InvalidInput("page_token is not a token this endpoint returned", field="page_token")
    return step, ts, seen


def _merge(parts: list[Points]) -> Points:
    """Chunks in arrival (chunk id) order merged into (step, timestamp, arrival) order."""
    if not parts:
        return _EMPTY
    if len(parts) == 1:
        return _sorted(parts[0])
    return _sorted(
        Points(
            np.concatenate([p.steps for p in parts]),
            np.concatenate([p.timestamps for p in parts]),
            np.concatenate([p.values for p in parts]),
        )
    )


def _decode_merge_into(decoded: dict[int, Points], fresh: dict[int, bytes]) -> Points:
    """Decodes the `fresh` chunks into `decoded` (by chunk id) and merges all of them."""
    decoded.update((chunk_id, metric_codec.decode(data)) for chunk_id, data in fresh.items())
    return _merge([decoded[i] for i in sorted(decoded)])


class MetricStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._heavy = asyncio.Semaphore(HEAVY_CONCURRENCY)

    async def off_loop(self, points: int, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)`, in a thread when it handles at least `OFFLOAD_POINTS` points, at most
        `HEAVY_CONCURRENCY` such calls at once: big histories and batches never stall the event loop.
        A slot is held until the thread is done, even when the request is cancelled (the client left):
        clients that hang up cannot pile up threads."""
        if points < OFFLOAD_POINTS:
            return fn(*args)
        await self._heavy.acquire()
        try:
            work = asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args))
        except BaseException:
            self._heavy.release()
            raise
        work.add_done_callback(self._done)
        return await asyncio.shield(work)

    def _done(self, work: asyncio.Future[Any]) -> None:
        self._heavy.release()
        if not work.cancelled():
            work.exception()  # retrieved: a caller that was cancelled never will

    async def log_batch(self, run_id: str, batch: LogBatch) -> LogBatchResult:
        now = now_ms()
        packed = await self.off_loop(_batch_points(batch), _pack, batch, now)
        args = (
            run_id,
            str(batch.batch_id or uuid.uuid4()),
            now,
            packed.keys,
            packed.sizes,
            packed.min_steps,
            packed.max_steps,
            packed.chunks,
            packed.values,
            packed.steps,
            packed.timestamps,
        )
        result = LogBatchResult(applied=True, points=sum(packed.sizes))
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

    async def history(
        self, run_id: str, key: str, *, max_results: int, page_token: str | None = None
    ) -> HistoryPage:
        """A page of a metric's points. The token holds the last point's (step, timestamp) and how many
        points with exactly that (step, timestamp) were already returned, so pages are exact even with
        duplicate points and while new points arrive.

        Only the chunks a page needs are decoded: chunks are taken in min_step order until they hold the
        page, since no chunk left out can hold a point below the next one's min_step. A page may hold
        fewer than `max_results` points when that would take decoding more than `DECODE_BUDGET`;
        `next_page_token` then goes on from where it stopped."""
        after = _cursor(page_token)
        since = after[0] if after else None
        want = min(max_results + (after[2] if after else 0), DECODE_BUDGET)
        index = await self._pool.fetch(_CHUNK_INDEX, run_id, key, since, want, INDEX_ROWS)
        ids = [r["chunk_id"] for r in index]
        sizes = [r["n_points"] for r in index]
        min_steps = [r["min_step"] for r in index]
        blobs = {r["chunk_id"]: r["data"] for r in index if r["data"] is not None}
        complete = len(index) < INDEX_ROWS
        decoded: dict[int, Points] = {}
        taken = total = 0
        while True:
            reach = taken
            while True:
                while reach < len(ids) and (reach == taken or total < want):
                    total += sizes[reach]
                    reach += 1
                # The next chunk's min_step bounds what is final: the index must reach past `reach`.
                if complete or reach < len(ids):
                    break
                more = await self._pool.fetch(
                    _MORE_INDEX, run_id, key, since, min_steps[-1], ids[-1], INDEX_ROWS
                )
                complete = len(more) < INDEX_ROWS
                ids += [r["chunk_id"] for r in more]
                sizes += [r["n_points"] for r in more]
                min_steps += [r["min_step"] for r in more]
            missing = [i for i in ids[taken:reach] if i not in blobs]
            if missing:
                rows = await self._pool.fetch(_CHUNK_DATA, run_id, key, missing)
                blobs.update((r["chunk_id"], r["data"]) for r in rows)  # a chunk deleted meanwhile is gone
            fresh = {i: blobs.pop(i) for i in ids[taken:reach] if i in blobs}
            taken = reach
            points = await self.off_loop(total, _decode_merge_into, decoded, fresh)
            bound = min_steps[taken] if taken < len(ids) else None
            start, end, reach_step = _window(points, after, max_results, bound)
            if bound is None or end - start == max_results or (end > start and total >= DECODE_BUDGET):
                break
            if reach_step is not None:
                # The chunks decoded hold a full page after the cursor, so the page ends at reach_step or
                # before: the chunks starting at or before it complete the page.
                extra = bisect.bisect_right(min_steps, reach_step, lo=taken) - taken
                want = total + sum(sizes[taken : taken + max(extra, 1)])
            else:
                want = 2 * max(want, total)
            if end > start:
                want = min(want, DECODE_BUDGET)
        page = Points(points.steps[start:end], points.timestamps[start:end], points.values[start:end])
        token = None
        if end < len(points) or bound is not None:
            last_step, last_ts = int(page.steps[-1]), int(page.timestamps[-1])
            token = encode_token(last_step, last_ts, end - _first_at(points, last_step, last_ts))
        return HistoryPage(key, page, token)

    async def downsampled(self, run_id: str, key: str, *, max_points: int) -> Points:
        rows = await self._pool.fetch(
            "SELECT n_points, data FROM metric_chunks WHERE run_id = $1 AND key = $2 ORDER BY chunk_id",
            run_id,
            key,
        )
        points = sum(r["n_points"] for r in rows)
        return await self.off_loop(points, _decode_downsample, [r["data"] for r in rows], max_points)

    async def downsampled_many(
        self, series: list[tuple[str, str]], *, max_points: int
    ) -> dict[tuple[str, str], Points]:
        """`downsampled` for many (run_id, key) pairs in one query (charts of a run or a comparison).
        Pairs without points are left out."""
        if not series:
            return {}
        rows = await self._pool.fetch(
            """
            SELECT c.run_id, c.key, c.n_points, c.data
            FROM metric_chunks c JOIN unnest($1::uuid[], $2::text[]) AS s(run_id, key)
                 ON c.run_id = s.run_id AND c.key = s.key
            ORDER BY c.run_id, c.key, c.chunk_id
            """,
            [run_id for run_id, _ in series],
            [key for _, key in series],
        )
        chunks: dict[tuple[str, str], list[bytes]] = {}
        for row in rows:
            chunks.setdefault((row["run_id"], row["key"]), []).append(row["data"])
        return await self.off_loop(sum(r["n_points"] for r in rows), _downsample_all, chunks, max_points)

    async def latest_of_runs(self, run_ids: list[str]) -> dict[str, list[Metric]]:
        """Each run's latest value per key with its step and timestamp (a `Run` carries values only),
        by key: one indexed read of latest_metrics for a whole page of runs."""
        found: dict[str, list[Metric]] = {run_id: [] for run_id in run_ids}
        if not run_ids:
            return found
        rows = await self._pool.fetch(
            "SELECT run_id, key, value, step, timestamp FROM latest_metrics WHERE run_id = ANY($1::uuid[])"
            " ORDER BY run_id, key",
            run_ids,
        )
        for row in rows:
            found[row["run_id"]].append(
                Metric.model_construct(
                    key=row["key"], value=row["value"], step=row["step"], timestamp=row["timestamp"]
                )
            )
        return found


def _decode_downsample(blobs: list[bytes], max_points: int) -> Points:
    return downsample(_merge([metric_codec.decode(b) for b in blobs]), max_points)


def _downsample_all(
    chunks: dict[tuple[str, str], list[bytes]], max_points: int
) -> dict[tuple[str, str], Points]:
    return {pair: _decode_downsample(blobs, max_points) for pair, blobs in chunks.items()}


def _window(
    points: Points, after: tuple[int, int, int] | None, max_results: int, bound: int | None
) -> tuple[int, int, int | None]:
    """(start, end, reach) of the page in `points`, the sorted points of the chunks decoded so far.

    Only points below `bound` (the least min_step of the chunks not decoded; None: all are decoded) are
    certain to be in their final place, so the page ends before it. `reach` is the step of the last
    point a full page would hold if the decoded chunks held every point (None when they hold fewer than
    a page after the cursor): the page surely ends at or before it."""
    final = len(points) if bound is None else int(np.searchsorted(points.steps, bound, side="left"))
    start = 0
    if after is not None:
        step, ts, seen = after
        start = min(_first_at(points, step, ts) + seen, len(points))
    reach = int(points.steps[start + max_results - 1]) if start + max_results <= len(points) else None
    if bound is not None and after is not None and after[0] >= bound:
        return start, start, reach  # the cursor itself is not in its final place yet
    start = min(start, final)
    return start, min(start + max_results, final), reach


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
    minimum and maximum of each of `(max_points - 2) / 2` equal-count buckets between them.

    The points a stable sort by (bucket, value) would put first and last in each bucket, found in linear
    time (a sort of a 3,000,000-point history took a second): the minimum is the first of the lowest
    values (NaN only when all are NaN), the maximum the last NaN if any, else the last of the highest."""
    n = len(points)
    if n <= max_points:
        return points
    buckets = max(1, (max_points - 2) // 2)
    inner = n - 2
    starts = -((-np.arange(buckets) * inner) // buckets)  # first j with j * buckets // inner == bucket
    ends = np.append(starts[1:], inner)
    values = points.values[1:-1]
    of = np.repeat(np.arange(buckets), ends - starts)
    lo = np.fmin.reduceat(values, starts)
    hi = np.fmax.reduceat(values, starts)
    lows = np.flatnonzero(values == lo[of])
    first = np.where(
        np.isnan(lo),
        starts,
        lows[np.minimum(np.searchsorted(lows, starts), max(len(lows) - 1, 0))] if len(lows) else starts,
    )
    nans = np.isnan(values)
    nan_at = np.flatnonzero(nans)
    highs = np.flatnonzero(values == hi[of])
    last_nan = nan_at[np.maximum(np.searchsorted(nan_at, ends) - 1, 0)] if len(nan_at) else ends - 1
    last_high = highs[np.maximum(np.searchsorted(highs, ends) - 1, 0)] if len(highs) else ends - 1
    last = np.where(np.logical_or.reduceat(nans, starts), last_nan, last_high)
    keep = np.unique(np.concatenate(([0], first + 1, last + 1, [n - 1])))
    return Points(points.steps[keep], points.timestamps[keep], points.values[keep])
