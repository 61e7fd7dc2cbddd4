"""Ingestion benchmark (issue 2): P parallel jobs, each its own run, logging metric batches over HTTP.

    python -m bench.ingest                      # P = 8 and 32, batches of 1,000 and 10,000 points
    python -m bench.ingest --jobs 8 --batch 10000 --points 2000000

Each job is a process with one keep-alive connection and one batch in flight, as a training job using
the SDK would be. Bodies use the columnar form with 10 metric keys (steps, values, timestamps) and are
encoded before the clock starts, so the 2 cores go to the service and Postgres, not to JSON encoding of
the load. Postgres runs with durable commits. In the same run, the naive ceiling: the same points
COPYed by asyncpg as one row each into `(run, key, value, step, timestamp)` with a primary key.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
import uuid
from dataclasses import dataclass

import aiohttp
import asyncpg
import numpy as np
import orjson

from bench.common import kiseki_server, machine_facts, postgres, postgres_version
from kiseki_server import db

KEYS = [f"metric_{i}" for i in range(10)]
PLACEHOLDER = "00000000-0000-4000-8000-000000000000"


@dataclass
class JobResult:
    points: int
    latencies: list[float]
    started: float
    finished: float


def make_bodies(n_batches: int, batch_points: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    per_key = batch_points // len(KEYS)
    t0 = 1_780_000_000_000
    bodies = []
    for b in range(n_batches):
        steps = np.arange(b * per_key, (b + 1) * per_key, dtype=np.int64)
        stamps = t0 + steps * 15 + rng.integers(0, 5, per_key)
        columns = {key: {"steps": steps, "values": rng.random(per_key), "timestamps": stamps} for key in KEYS}
        body = orjson.dumps(
            {"batch_id": PLACEHOLDER, "metric_columns": columns}, option=orjson.OPT_SERIALIZE_NUMPY
        )
        bodies.append(body.replace(PLACEHOLDER.encode(), str(uuid.uuid4()).encode()))
    return bodies


async def _job(url: str, run_id: str, bodies: list[bytes], points_each: int, start_at: float) -> JobResult:
    headers = {"Content-Type": "application/json"}
    latencies = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        for body in bodies:
            t = time.perf_counter()
            async with session.post(f"{url}/api/v1/runs/{run_id}/batch", data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"batch failed: {r.status} {await r.text()}")
            latencies.append(time.perf_counter() - t)
        finished = time.time()
    return JobResult(points_each * len(bodies), latencies, started, finished)


def _job_process(args: tuple[str, str, int, int, int, float, mp.Queue]) -> None:
    url, run_id, n_batches, batch_points, seed, start_at, out = args
    bodies = make_bodies(n_batches, batch_points, seed)
    out.put(asyncio.run(_job(url, run_id, bodies, batch_points, start_at)))


async def _create_runs(url: str, n: int) -> list[str]:
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{url}/api/v1/experiments/get-or-create", json={"name": "bench-ingest"}) as r:
            experiment_id = (await r.json())["experiment"]["experiment_id"]
        runs = []
        for _ in range(n):
            async with s.post(f"{url}/api/v1/runs", json={"experiment_id": experiment_id}) as r:
                runs.append((await r.json())["info"]["run_id"])
    return runs


def run_http(url: str, jobs: int, batch_points: int, total_points: int) -> dict[str, float]:
    run_ids = asyncio.run(_create_runs(url, jobs))
    n_batches = max(2, total_points // (jobs * batch_points))
    # Encoding the load takes a while at 32 jobs on 2 cores: start everyone together once all are ready.
    start_at = time.time() + 4 + jobs * n_batches * batch_points / 4e6
    queue: mp.Queue = mp.Queue()
    procs = [
        mp.Process(
            target=_job_process, args=((url, run_ids[i], n_batches, batch_points, i, start_at, queue),)
        )
        for i in range(jobs)
    ]
    for p in procs:
        p.start()
    results: list[JobResult] = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(r.finished for r in results) - min(r.started for r in results)
    lat = sorted(x for r in results for x in r.latencies)
    points = sum(r.points for r in results)
    return {
        "points": points,
        "seconds": wall,
        "points_per_s": points / wall,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
    }


async def storage_bytes_per_point(database_url: str) -> tuple[float, int]:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CHECKPOINT")
        await conn.execute("VACUUM ANALYZE metric_chunks, latest_metrics, applied_batches")
        size = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(t)) FROM unnest(ARRAY["
            "'metric_chunks', 'latest_metrics', 'applied_batches']::regclass[]) AS t"
        )
        points = await conn.fetchval("SELECT coalesce(sum(n_points), 0) FROM metric_chunks")
    finally:
        await conn.close()
    return size / max(points, 1), points


def _copy_process(args: tuple[str, int, int, int, float, mp.Queue]) -> None:
    database_url, n_batches, batch_points, seed, start_at, out = args

    async def main() -> JobResult:
        rng = np.random.default_rng(seed)
        run = uuid.uuid4()
        per_key = batch_points // len(KEYS)
        batches = []
        for b in range(n_batches):
            steps = list(range(b * per_key, (b + 1) * per_key))
            batches.append(
                [
                    (run, k, float(v), s, 1_780_000_000_000 + s)
                    for k in KEYS
                    for s, v in zip(steps, rng.random(per_key), strict=True)
                ]
            )
        conn = await asyncpg.connect(database_url)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started, latencies = time.time(), []
        for records in batches:
            t = time.perf_counter()
            await conn.copy_records_to_table(
                "naive_points", records=records, columns=["run_id", "key", "value", "step", "timestamp"]
            )
            latencies.append(time.perf_counter() - t)
        finished = time.time()
        await conn.close()
        return JobResult(batch_points * n_batches, latencies, started, finished)

    out.put(asyncio.run(main()))


def run_naive_copy(database_url: str, jobs: int, batch_points: int, total_points: int) -> dict[str, float]:
    async def setup() -> None:
        conn = await asyncpg.connect(database_url)
        await conn.execute(
            "DROP TABLE IF EXISTS naive_points; CREATE TABLE naive_points (run_id uuid, key text,"
            " value float8, step bigint, timestamp bigint, PRIMARY KEY (run_id, key, step, timestamp))"
        )
        await conn.close()

    asyncio.run(setup())
    n_batches = max(2, total_points // (jobs * batch_points))
    start_at = time.time() + 4 + jobs * n_batches * batch_points / 1e6
    queue: mp.Queue = mp.Queue()
    procs = [
        mp.Process(target=_copy_process, args=((database_url, n_batches, batch_points, i, start_at, queue),))
        for i in range(jobs)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    wall = max(r.finished for r in results) - min(r.started for r in results)
    points = sum(r.points for r in results)

    async def size() -> float:
        conn = await asyncpg.connect(database_url)
        await conn.execute("CHECKPOINT")
        total = await conn.fetchval("SELECT pg_total_relation_size('naive_points')")
        await conn.execute("DROP TABLE naive_points")
        await conn.close()
        return total / points

    return {
        "points": points,
        "seconds": wall,
        "points_per_s": points / wall,
        "bytes_per_point": asyncio.run(size()),
    }


async def history_read(url: str, n_points: int = 100_000, repeats: int = 30) -> dict[str, float]:
    """Log one 100,000-point metric, then time reading its whole history back through the API."""
    run_id = (await _create_runs(url, 1))[0]
    per = 10_000
    async with aiohttp.ClientSession() as s:
        for b in range(n_points // per):
            steps = np.arange(b * per, (b + 1) * per)
            body = {
                "metric_columns": {
                    "loss": {"steps": steps, "values": np.random.rand(per), "timestamps": steps}
                }
            }
            data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
            async with s.post(f"{url}/api/v1/runs/{run_id}/batch", data=data) as r:
                assert r.status == 200, await r.text()
        fetch, decode = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            async with s.get(
                f"{url}/api/v1/runs/{run_id}/metrics/history",
                params={"key": "loss", "max_results": str(n_points)},
            ) as r:
                raw = await r.read()
            t1 = time.perf_counter()
            body = orjson.loads(raw)
            t2 = time.perf_counter()
            assert len(body["values"]) == n_points
            fetch.append(t1 - t)
            decode.append(t2 - t)
        small = []
        for _ in range(200):
            t = time.perf_counter()
            async with s.get(f"{url}/api/v1/runs/{run_id}") as r:
                await r.read()
            small.append(time.perf_counter() - t)
    return {
        "history_ms_p50": 1000 * statistics.median(fetch),
        "history_with_json_decode_ms_p50": 1000 * statistics.median(decode),
        "history_bytes": len(raw),
        "get_run_ms_p50": 1000 * statistics.median(small),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--batch", type=int, nargs="+", default=[10_000, 1_000])
    parser.add_argument("--points", type=int, default=8_000_000, help="points per scenario (approx.)")
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    print(f"machine: {machine_facts()}")
    with postgres() as database_url:
        asyncio.run(db.upgrade(database_url))
        print(f"database: {asyncio.run(postgres_version(database_url))}")
        rows = []
        with kiseki_server(database_url) as url:
            for batch in args.batch:
                for jobs in args.jobs:
                    total = args.points if batch >= 10_000 else args.points // 4
                    r = run_http(url, jobs, batch, total)
                    rows.append((jobs, batch, r))
                    print(
                        f"HTTP  jobs={jobs:>2} batch={batch:>6}: {r['points_per_s']:>12,.0f} points/s"
                        f"  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  ({r['points']:,} points)",
                        flush=True,
                    )
            per_point, stored = asyncio.run(storage_bytes_per_point(database_url))
            print(f"storage: {per_point:.2f} bytes/point over {stored:,} points (tables + indexes + TOAST)")
            h = asyncio.run(history_read(url))
            print(
                f"history of 100,000 points: {h['history_ms_p50']:.1f} ms p50 (response received), "
                f"{h['history_with_json_decode_ms_p50']:.1f} ms with JSON decoding; "
                f"{h['history_bytes']:,} bytes"
            )
            print(f"small request (GET run) p50: {h['get_run_ms_p50']:.2f} ms")
        if not args.skip_naive:
            for batch in args.batch:
                jobs = args.jobs[0]
                total = args.points // 4 if batch >= 10_000 else args.points // 8
                r = run_naive_copy(database_url, jobs, batch, total)
                print(
                    f"naive COPY jobs={jobs} batch={batch}: {r['points_per_s']:,.0f} points/s, "
                    f"{r['bytes_per_point']:.0f} bytes/point ({r['points']:,} points)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
