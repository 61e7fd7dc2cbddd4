"""Run browser benchmark (issue 6): how long each HTML page takes, over HTTP, on benchmark data.

    python -m bench.ui                         # 10,000 runs in one experiment
    python -m bench.ui --runs 10000 100000 --write   # and record the results in bench/RESULTS.md

The experiment holds N runs, each with 5 params (p0..p4), 5 latest metric values (m0..m4) and 2 tags,
seeded with COPY like bench.search; 20 small experiments of 10 runs sit beside it. 20 runs have a
history of 1,000 points for each of m0..m4, and one run has a 100,000-point `loss` history (all
packed with the service's own codec). A real `kiseki server` process (local artifact store) answers;
one client sends one request at a time over a keep-alive connection and times each page until its
whole body has arrived.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
import asyncpg
import numpy as np

from bench.common import (
    RESULTS,
    T0,
    copy_runs,
    kiseki_server,
    machine_facts,
    postgres,
    postgres_version,
    write_section,
)
from kiseki_server import db, metric_codec
from kiseki_server.metric_codec import Points

CHUNK = 50_000
HISTORY_RUNS = 20
HISTORY_POINTS = 1_000
BIG_POINTS = 100_000
SECTION = "## Run browser (issue 6)"
TARGET_MS = 200.0
NOTES = """\
Reading the figures. A runs page is one keyset search (see the search section), a sample of the newest
1,000 runs for the default columns, and the experiment's run counts, run concurrently; then ~100 rows
of HTML. The search and the rendering cost the same on page 51 as on page 1. What grows with the
experiment is the run count in the page header (and on the experiments page): one index range over
the experiment's runs, ~2 ms at 10k runs and ~15 ms at 100k; at millions of runs per experiment a
counter kept by run creation and deletion would replace it. The run page with a 100,000-point metric
spends its time decoding the history before downsampling it to 500 points; a chart is a few KiB of
SVG whatever the history holds. The compare page draws every curve twice (step and time views), so
its size grows with the number of runs (a 3,000-point budget per chart keeps it bounded).
"""


async def seed(url: str, n_runs: int) -> tuple[int, list[str], str]:
    """The main experiment's id, the runs with histories, and the run with the 100k-point metric."""
    await db.upgrade(url)
    conn = await asyncpg.connect(url)
    try:
        for i in range(20):
            small = await conn.fetchval(
                "INSERT INTO experiments (name, creation_time, last_update_time) VALUES ($1, $2, $2) "
                "RETURNING experiment_id",
                f"side-{i}",
                T0,
            )
            await conn.copy_records_to_table(
                "runs",
                records=[
                    (uuid.uuid4(), small, f"side-{i}-{j}", "FINISHED", T0 + j, T0 + j + 9) for j in range(10)
                ],
                columns=["run_id", "experiment_id", "run_name", "status", "start_time", "end_time"],
            )
        experiment_id: int = await conn.fetchval(
            "INSERT INTO experiments (name, creation_time, last_update_time) VALUES ('bench', $1, $1) "
            "RETURNING experiment_id",
            T0,
        )
        rng = np.random.default_rng(6)
        all_ids: list[uuid.UUID] = []
        statuses = ("FINISHED", "FINISHED", "FINISHED", "FAILED", "KILLED", "RUNNING")
        for start in range(0, n_runs, CHUNK):
            all_ids += await copy_runs(
                conn,
                experiment_id,
                start,
                min(CHUNK, n_runs - start),
                rng,
                statuses=statuses,
                duration_ms=61_000,
                latest_step=HISTORY_POINTS - 1,
            )
        # Histories: the newest runs, so they are on the experiment page's first page too.
        history_ids = all_ids[-HISTORY_RUNS:]
        steps = np.arange(HISTORY_POINTS, dtype=np.int64)
        chunks = []
        for rid in history_ids:
            for k in range(5):
                values = np.exp(-steps / 300) + rng.normal(0, 0.02, HISTORY_POINTS)
                points = Points(steps, T0 + steps * 1500, values.astype(np.float64))
                chunks.append((rid, f"m{k}", len(points), 0, HISTORY_POINTS - 1, metric_codec.encode(points)))
        big = history_ids[-1]
        big_steps = np.arange(BIG_POINTS, dtype=np.int64)
        for first in range(0, BIG_POINTS, 10_000):  # as ten 10,000-point batches would have stored it
            part = big_steps[first : first + 10_000]
            values = 2 * np.exp(-part / 20_000) + rng.normal(0, 0.05, len(part))
            points = Points(part, T0 + part * 100, values.astype(np.float64))
            chunks.append(
                (big, "loss", len(points), int(part[0]), int(part[-1]), metric_codec.encode(points))
            )
        await conn.copy_records_to_table(
            "metric_chunks",
            records=chunks,
            columns=["run_id", "key", "n_points", "min_step", "max_step", "data"],
        )
        await conn.execute(
            "INSERT INTO latest_metrics (run_id, key, value, step, timestamp) "
            "VALUES ($1, 'loss', 0.05, $2, $3)",
            big,
            BIG_POINTS - 1,
            T0,
        )
        await conn.execute("VACUUM (FREEZE, ANALYZE)")
        return experiment_id, [r.hex for r in history_ids], big.hex
    finally:
        await conn.close()


async def timed_get(session: aiohttp.ClientSession, url: str) -> tuple[float, bytes]:
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"GET {url} answered {response.status}: {body[:300]!r}")
    return elapsed * 1000, body


def _next_link(body: bytes) -> str:
    match = re.search(rb'<a href="([^"]*)" rel="next">', body)
    if not match:
        raise RuntimeError("the page has no next link")
    return match.group(1).decode().replace("&amp;", "&")


async def measure(base: str, experiment_id: int, history: list[str], big: str, n: int) -> list[list[str]]:
    exp = f"{base}/experiments/{experiment_id}"
    filtered = (
        "?filter=" + quote("metrics.m0 > 0.5 AND params.p1 = 'v3'") + "&order_by=" + quote("metrics.m0 DESC")
    )
    rows = []
    async with aiohttp.ClientSession() as session:
        # A page 50 pages deep (5,000 runs in), reached by following "next" links as a user would.
        url = f"{exp}?order_by={quote('metrics.m1 DESC')}"
        for _ in range(50):
            _, body = await timed_get(session, url)
            url = base + _next_link(body)
        deep = url
        pages = {
            "experiments (21 experiments with run counts)": f"{base}/",
            "experiment: newest 100 runs": exp,
            "experiment: 100 runs by metrics.m1 DESC": f"{exp}?order_by={quote('metrics.m1 DESC')}",
            "experiment: filtered + ordered": exp + filtered,
            "experiment: page 51 by metrics.m1 DESC (next links)": deep,
            "experiment: 500 runs per page": f"{exp}?max_results=500",
            "experiment: invalid filter (error inline)": f"{exp}?filter={quote('metrics.m0 >')}",
            "run: 5 charts of 1,000 points": f"{base}/runs/{history[0]}",
            "run: 100,000-point metric + 5 charts": f"{base}/runs/{big}",
            "compare: 2 runs, 5 charts": f"{base}/compare?" + "&".join(f"runs={r}" for r in history[:2]),
            "compare: 10 runs, 5 charts": f"{base}/compare?" + "&".join(f"runs={r}" for r in history[:10]),
        }
        for name, url in pages.items():
            for _ in range(5):
                await timed_get(session, url)
            times, size = [], 0
            for _ in range(n):
                elapsed, body = await timed_get(session, url)
                times.append(elapsed)
                size = len(body)
            p50, p95 = float(np.percentile(times, 50)), float(np.percentile(times, 95))
            mark = "✔" if p95 < TARGET_MS else "✘"
            rows.append([name, f"{p50:.1f} ms", f"{p95:.1f} ms {mark}", f"{size / 1024:.0f} KiB", str(n)])
            print(f"{name}: p50 {p50:.1f} ms, p95 {p95:.1f} ms, {size / 1024:.0f} KiB", flush=True)
    return rows


async def one_size(admin_url: str, n_runs: int, requests: int) -> str:
    name = f"kiseki_bench_ui_{n_runs}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    started = time.perf_counter()
    experiment_id, history, big = await seed(url, n_runs)
    print(f"{n_runs:,} runs seeded in {time.perf_counter() - started:.0f} s", flush=True)
    with (
        tempfile.TemporaryDirectory(prefix="kiseki-bench-ui-", dir="/tmp") as data_dir,
        kiseki_server(url, "--data-dir", data_dir) as base,
    ):
        rows = await measure(base, experiment_id, history, big, requests)
    table = ["| page | p50 | p95 | size | requests |", "| --- | ---: | ---: | ---: | ---: |"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([f"### {n_runs:,} runs in one experiment", "", *table, ""])


async def main_async(sizes: list[int], requests: int, write: bool) -> None:
    with postgres() as admin_url:
        pg = await postgres_version(admin_url)
        sections = [await one_size(admin_url, n, requests) for n in sizes]
    text = "\n".join(
        [
            SECTION,
            "",
            f"Measured {machine_facts()}; {pg}. Reproduce: `python -m bench.ui --write`.",
            "",
            "Each page over keep-alive HTTP from a `kiseki server` process, one request at a time, timed",
            "until the whole HTML has arrived (server-rendered, charts included as inline SVG). Target:",
            f"p95 well under {TARGET_MS:.0f} ms. Seeded data: see the docstring of `bench/ui.py`.",
            "",
            *NOTES.splitlines(),
            "",
            *sections,
        ]
    )
    print(text)
    if write:
        write_section(SECTION, text)
        print(f"wrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[10_000])
    parser.add_argument("--requests", type=int, default=40, help="timed requests per page")
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    asyncio.run(main_async(args.runs, args.requests, args.write))


if __name__ == "__main__":
    main()
