"""Search benchmark (issue 5): filtered+ordered search, pages of 1,000, paging everything — over HTTP.

    python -m bench.search                      # 10,000 and 1,000,000 runs
    python -m bench.search --runs 10000 --write # and record the results in bench/RESULTS.md

Each run has 5 params (p0..p4 = 'v0'..'v9'), 5 metrics (m0..m4 uniform in [0, 1)) and 2 tags (t0 of
7 values, t1 of 1,000), all in one experiment, seeded with COPY into a fresh database migrated by
`kiseki_server.db.upgrade`. A real `kiseki server` process answers; one client sends one request at
a time over a keep-alive connection and times each until its body has arrived. EXPLAIN ANALYZE of the
main statements comes from the store itself (SearchStore(..., explain=...)), and each search index of
0002_search.sql is dropped in turn (inside a rolled-back transaction) to show what it is worth.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import numpy as np
import orjson

from bench.common import (
    RESULTS,
    copy_runs,
    kiseki_server,
    machine_facts,
    postgres,
    postgres_version,
    write_section,
)
from kiseki.models import RunSearch
from kiseki_server import db
from kiseki_server.stores.runs import RUN_COLUMNS
from kiseki_server.stores.search import Explained, SearchStore

CHUNK = 50_000
FILTERED = {
    "filter": "metrics.m0 > 0.5 and params.p1 = 'v3'",
    "order_by": ["metrics.m0 DESC"],
    "max_results": 100,
}
SEARCH_INDEXES = ["latest_metrics_by_value", "params_by_value", "tags_by_value", "runs_by_start_time"]
INTRO = """\
Runs have 5 params, 5 metrics and 2 tags (one of 7 values, one of 1,000), in one experiment
(searched by id, or across all experiments). One client, one request at a time over keep-alive HTTP
to a `kiseki server` process, timed until the whole body has arrived. Targets: at 10k runs filtered
≤ 10 ms p50, a page of 1,000 ≤ 50 ms, all 10k paged ≤ 1 s; at 1M runs filtered ≤ 100 ms p50. MLflow
on such a machine at 10k runs: filtered ~200 ms, a page of 1,000 ~1.8 s, paging all ~16 s.
"""
NOTES = """\
Reading the figures. At 1M runs the filtered search walks `latest_metrics_by_value` down from the
top of m0, probes `params_by_value` (index-only) for each run's p1 and stops after 101 matches, so it
costs what it costs at 10k (where the planner prefers hashing both index ranges and a top-N sort).
A page of 1,000 spends about a third of its time in Postgres (the "page of 1,000" statement below)
and the rest in the service: decoding the params/tags/metrics arrays of `RUN_COLUMNS`,
validating 1,000 `Run` models in `run_from_row`, JSON. To move it: build models with
`model_construct` for rows read from our own database, or have Postgres aggregate each run's keys as
JSON. A keyset page 200,000 runs deep costs what the first page costs. The index table shows
`latest_metrics_by_value` carrying metric filters and orderings, `params_by_value` making the param
probe ~3x cheaper, `tags_by_value` serving selective tag filters (it costs a millisecond or two when
the tag is common), and `runs_by_start_time` serving newest-first across experiments. The 2 cores
are shared with other work at times: figures swing by up to 2x between runs, so compare within one.
"""
SECTION = "## Search (issue 5)"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


async def seed(url: str, n_runs: int) -> int:
    """A migrated database holding n_runs runs in one experiment; returns the experiment id."""
    await db.upgrade(url)
    conn = await asyncpg.connect(url)
    try:
        experiment_id: int = await conn.fetchval(
            "INSERT INTO experiments (name, creation_time, last_update_time) VALUES ('bench', 0, 0) "
            "RETURNING experiment_id"
        )
        rng = np.random.default_rng(5)
        for start in range(0, n_runs, CHUNK):
            await copy_runs(conn, experiment_id, start, min(CHUNK, n_runs - start), rng)
        # What autovacuum reaches in steady state: statistics, and a visibility map for index-only scans.
        await conn.execute("VACUUM (FREEZE, ANALYZE)")
        return experiment_id
    finally:
        await conn.close()


async def timed(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    async with session.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as r:
        payload = await r.read()
        elapsed = time.perf_counter() - started
        if r.status != 200:
            raise RuntimeError(f"search failed with {r.status}: {payload[:300]!r}")
    return elapsed, orjson.loads(payload)


async def measure(base: str, experiment_id: int, n_runs: int) -> dict[str, dict[str, float]]:
    url = f"{base}/api/v1/runs/search"
    scope = {"experiment_ids": [str(experiment_id)]}
    results: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as session:

        async def series(name: str, body: dict[str, Any], n: int, expect: int | None = None) -> None:
            for _ in range(5):
                await timed(session, url, body)
            times = []
            for _ in range(n):
                elapsed, page = await timed(session, url, body)
                times.append(elapsed * 1000)
                if expect is not None and len(page["runs"]) != expect:
                    raise RuntimeError(f"{name}: expected {expect} runs, got {len(page['runs'])}")
            results[name] = {"p50": percentile(times, 50), "p95": percentile(times, 95), "n": n}

        await series("filtered+ordered, 100 results", {**scope, **FILTERED}, 100, 100)
        await series("filtered+ordered, all experiments", FILTERED, 50, 100)
        await series("page of 1,000 (newest first)", {**scope, "max_results": 1000}, 30, 1000)
        by_metric = {**scope, "max_results": 1000, "order_by": ["metrics.m1 DESC"]}
        await series("page of 1,000 by metrics.m1 DESC", by_metric, 20, 1000)
        if n_runs <= 100_000:
            totals = []
            for _ in range(5):
                started, token, seen = time.perf_counter(), None, 0
                while True:
                    _, page = await timed(session, url, {**scope, "max_results": 1000, "page_token": token})
                    seen += len(page["runs"])
                    token = page["next_page_token"]
                    if token is None:
                        break
                totals.append((time.perf_counter() - started) * 1000)
                if seen != n_runs:
                    raise RuntimeError(f"paging returned {seen} runs, expected {n_runs}")
            results[f"all {n_runs:,} runs in pages of 1,000"] = {
                "p50": percentile(totals, 50),
                "p95": percentile(totals, 95),
                "n": 5,
            }
        else:
            # Keyset pages cost the same deep into the results: jump 200,000 runs ahead, then time pages.
            token = None
            for _ in range(4):
                _, page = await timed(session, url, {**scope, "max_results": 50_000, "page_token": token})
                token = page["next_page_token"]
            deep = {**scope, "max_results": 1000, "page_token": token}
            await series("page of 1,000 after 200,000 runs", deep, 20, 1000)
    return results


async def explain(url: str, experiment_id: int) -> tuple[list[tuple[str, Explained]], list[str]]:
    """Plans of the main statements, and what each search index is worth to them."""
    pool = await db.create_pool(url, min_size=1, max_size=1)
    store = SearchStore(pool)
    scope = [str(experiment_id)]
    cases = {
        "filtered+ordered (one experiment)": RunSearch(experiment_ids=scope, **FILTERED),
        "filtered+ordered (all experiments)": RunSearch(**FILTERED),
        "page of 1,000, newest first": RunSearch(experiment_ids=scope, max_results=1000),
        "tag filter, newest first, all experiments": RunSearch(filter="tags.t0 = 'tag-3'", max_results=100),
        "rare tag (1 run in 1,000), newest first": RunSearch(
            experiment_ids=scope, filter="tags.t1 = 'user-7'", max_results=100
        ),
    }
    plans: list[tuple[str, Explained]] = []
    for name, request in cases.items():
        found: list[Explained] = []
        await store.search_runs(request, explain=found)
        plans += [(name, e) for e in found]
    lines = []
    async with pool.acquire() as conn:
        for name, e in plans:
            row = [name, f"{_execution_ms(e.plan):.1f} ms"]
            for index in SEARCH_INDEXES:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    await conn.execute(f"DROP INDEX {index}")
                    plan = await conn.fetch(f"EXPLAIN (ANALYZE) {e.sql}", *e.args)
                    row.append(f"{_execution_ms(chr(10).join(r[0] for r in plan)):.1f} ms")
                finally:
                    await transaction.rollback()
            lines.append("| " + " | ".join(row) + " |")
    await pool.close()
    return plans, lines


def _execution_ms(plan: str) -> float:
    match = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return float(match.group(1)) if match else float("nan")


def report(facts: str, pg: str, sections: list[str]) -> str:
    return "\n".join(
        [
            SECTION,
            "",
            f"Measured {facts}; {pg}. Reproduce: `python -m bench.search --write`.",
            "",
            *INTRO.splitlines(),
            "",
            *NOTES.splitlines(),
            "",
            *sections,
        ]
    )


async def one_size(admin_url: str, n_runs: int) -> tuple[str, str]:
    name = f"kiseki_bench_search_{n_runs}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    started = time.perf_counter()
    experiment_id = await seed(url, n_runs)
    seeded = time.perf_counter() - started
    print(f"{n_runs:,} runs seeded in {seeded:.0f} s", flush=True)
    with kiseki_server(url) as base:
        results = await measure(base, experiment_id, n_runs)
    plans, index_rows = await explain(url, experiment_id)
    table = ["| measurement | p50 | p95 | requests |", "| --- | ---: | ---: | ---: |"]
    table += [f"| {k} | {v['p50']:.1f} ms | {v['p95']:.1f} ms | {v['n']:.0f} |" for k, v in results.items()]
    print("\n".join(table), flush=True)
    drops = " | ".join(f"without {i}" for i in SEARCH_INDEXES)
    index_table = [f"| statement (server-side execution) | all indexes | {drops} |"]
    index_table += ["| --- | ---: |" + " ---: |" * len(SEARCH_INDEXES), *index_rows]
    print("\n".join(index_table), flush=True)
    shown = [
        f"#### {name}\n\n```\n{e.sql.replace(RUN_COLUMNS.strip(), '<run columns>')}\n\n{e.plan}\n```"
        for name, e in plans
    ]
    section = [
        f"### {n_runs:,} runs (seeded in {seeded:.0f} s)",
        "",
        *table,
        "",
        "What each index of `0002_search.sql` is worth (EXPLAIN ANALYZE execution time, index dropped):",
        "",
        *index_table,
        "",
        "<details><summary>EXPLAIN ANALYZE of the statements</summary>",
        "",
        *shown,
        "",
        "</details>",
        "",
    ]
    return "\n".join(section), url


async def main_async(sizes: list[int], write: bool) -> None:
    with postgres() as admin_url:
        pg = await postgres_version(admin_url)
        sections = []
        for n in sizes:
            section, _ = await one_size(admin_url, n)
            sections.append(section)
    text = report(machine_facts(), pg, sections)
    if write:
        write_section(SECTION, text)
        print(f"wrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--write", action="store_true", help="record the results in bench/RESULTS.md")
    args = parser.parse_args()
    asyncio.run(main_async(args.runs, args.write))


if __name__ == "__main__":
    main()
