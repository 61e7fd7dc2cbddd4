"""Backpressure benchmark (issue 10): how fast a small GET stays while many jobs saturate ingest.

    python -m bench.backpressure                 # 200 jobs for 15 s, print the results
    python -m bench.backpressure --jobs 1000     # more jobs
    python -m bench.backpressure --write         # and update the '## Backpressure (issue 10)' section

Each job posts batches of `--points` points to a run of its own, as fast as it is let, and after a 503
waits the Retry-After it was given (as the SDK does). Meanwhile a separate process sends one small
`GET /api/v1/runs/{run_id}` after another on a keep-alive connection and records how long each took.
To measure the code before a change, run it with PYTHONPATH pointing at that checkout's service/ and sdk/
(the server is started as `python -m kiseki server`, so it takes the code from there).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing as mp
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import orjson

from bench.common import RESULTS, kiseki_server, machine_facts, postgres, postgres_version, write_section

SECTION = "## Backpressure (issue 10)"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else float("nan")


def probe(url: str, path: str, seconds: float, out: Connection) -> None:
    """Small GETs back to back for `seconds`; sends the latencies (s) and the non-200 count."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    times, failed = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        times.append(time.perf_counter() - started)
        failed += response.status != 200
        time.sleep(0.02)
    conn.close()
    out.send((times, failed))


async def saturate(url: str, jobs: int, points: int, seconds: float) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:
        async with session.post("/api/v1/experiments", json={"name": f"bp-{uuid.uuid4().hex[:8]}"}) as r:
            experiment_id = (await r.json())["experiment_id"]
        runs = []
        for _ in range(jobs):
            async with session.post("/api/v1/runs", json={"experiment_id": experiment_id}) as r:
                runs.append((await r.json())["info"]["run_id"])
        columns = {"values": [i * 0.25 for i in range(points)], "steps": list(range(points))}
        template = orjson.dumps({"batch_id": "BATCH-ID", "metric_columns": {"loss": columns}})
        statuses: dict[int, int] = {}
        accepted_latency: list[float] = []
        errors = 0

        async def job(run_id: str, stop_at: float) -> None:
            nonlocal errors
            while time.monotonic() < stop_at:
                body = template.replace(b"BATCH-ID", str(uuid.uuid4()).encode())
                started = time.perf_counter()
                try:
                    async with session.post(
                        f"/api/v1/runs/{run_id}/batch",
                        data=body,
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    await asyncio.sleep(1)
                    continue
                statuses[r.status] = statuses.get(r.status, 0) + 1
                if r.status == 200:
                    accepted_latency.append(time.perf_counter() - started)
                elif r.status in (429, 503):
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

        reader, writer = mp.get_context("spawn").Pipe(duplex=False)
        prober = mp.get_context("spawn").Process(
            target=probe, args=(url, f"/api/v1/runs/{runs[0]}", seconds, writer)
        )
        prober.start()
        started = time.monotonic()
        await asyncio.gather(*(job(run_id, started + seconds) for run_id in runs))
        elapsed = time.monotonic() - started
        probe_times, probe_failed = await asyncio.to_thread(reader.recv)
        prober.join()
    return {
        "statuses": statuses,
        "errors": errors,
        "points_per_s": statuses.get(200, 0) * points / elapsed,
        "batch_p50": percentile(accepted_latency, 50),
        "batch_p99": percentile(accepted_latency, 99),
        "batch_max": max(accepted_latency, default=float("nan")),
        "get_n": len(probe_times),
        "get_failed": probe_failed,
        "get_p50": percentile(probe_times, 50),
        "get_p99": percentile(probe_times, 99),
        "get_max": max(probe_times, default=float("nan")),
    }


async def migrate(url: str) -> str:
    from kiseki_server import db

    admin = await asyncpg.connect(url)
    name = f"kiseki_bench_bp_{uuid.uuid4().hex[:8]}"
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    database = urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    await db.upgrade(database)
    return database


HEADER = (
    "| code | jobs | points/batch | GET p50 ms | GET p99 ms | GET max ms | batch p99 ms | batch max ms "
    "| points/s | statuses |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def rows_kept(label: str, jobs: int, points: int) -> list[str]:
    """This section's earlier rows, except the one this run replaces (same label, jobs and batch size)."""
    if not RESULTS.exists() or SECTION not in RESULTS.read_text():
        return []
    section = RESULTS.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [
        row
        for row in section.splitlines()
        if row.startswith("| ")
        and not row.startswith("| code")
        and not row.startswith(f"| {label} | {jobs} | {points:,} |")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--points", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    with postgres() as admin_url:
        database = asyncio.run(migrate(admin_url))
        version = asyncio.run(postgres_version(database))
        with kiseki_server(database) as url:
            r = asyncio.run(saturate(url, args.jobs, args.points, args.seconds))
    ms = 1000
    line = (
        f"| {args.label} | {args.jobs} | {args.points:,} | "
        f"{r['get_p50'] * ms:.0f} | {r['get_p99'] * ms:.0f} | "
        f"{r['get_max'] * ms:.0f} | {r['batch_p99'] * ms:.0f} | {r['batch_max'] * ms:.0f} | "
        f"{r['points_per_s']:,.0f} | {r['statuses']} |"
    )
    print(f"{machine_facts()}; {version}")
    print(f"small GETs: {r['get_n']} ({r['get_failed']} not 200); client errors: {r['errors']}")
    print(HEADER)
    print(line)
    if args.write:
        rows = [*rows_kept(args.label, args.jobs, args.points), line]
        write_section(
            SECTION,
            f"{SECTION}\n\n{machine_facts()}; {version}. `python -m bench.backpressure --jobs N --label L`: "
            f"N jobs post batches of that many points for {args.seconds:g} s (after a 503 they wait its "
            "Retry-After) while another process times small GETs (`GET /api/v1/runs/{id}`) on a keep-alive "
            "connection; default settings, one server process.\n\n" + HEADER + "\n" + "\n".join(rows) + "\n",
        )


if __name__ == "__main__":
    main()
