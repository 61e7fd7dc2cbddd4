"""SDK ingestion benchmark (issue 4): the fluent `log_metric`, one call per point, from P processes,
against the raw HTTP batch rate of `bench.ingest` in the same run.

    python -m bench.sdk_ingest                   # P = 8 and 32
    python -m bench.sdk_ingest --jobs 8 --points 500000

Each job is a process that does what a training script does: `set_experiment`, `start_run`, then
`kiseki.log_metric(key, value, step=step)` in a loop over 10 keys, and leaves the block (which flushes).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time

from bench.common import kiseki_server, machine_facts, postgres, postgres_version
from bench.ingest import run_http
from kiseki_server import db

KEYS = [f"metric_{i}" for i in range(10)]


def _job(args: tuple[str, int, float, mp.Queue]) -> None:
    url, points, start_at, out = args
    import kiseki

    kiseki.set_tracking_uri(url)
    kiseki.set_experiment("bench-sdk")
    with kiseki.start_run():
        time.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        log_metric = kiseki.log_metric
        steps = points // len(KEYS)
        for step in range(steps):
            for key in KEYS:
                log_metric(key, 0.5, step=step)
        enqueued = time.time()
    out.put((steps * len(KEYS), started, enqueued, time.time()))


def run_sdk(url: str, jobs: int, points_per_job: int) -> dict[str, float]:
    queue: mp.Queue = mp.Queue()
    start_at = time.time() + 3 + jobs * 0.1
    procs = [mp.Process(target=_job, args=((url, points_per_job, start_at, queue),)) for _ in range(jobs)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    points = sum(r[0] for r in results)
    wall = max(r[3] for r in results) - min(r[1] for r in results)
    return {"points": points, "seconds": wall, "points_per_s": points / wall}


def call_cost(url: str, calls: int = 1_000_000) -> float:
    """Mean seconds per `log_metric` call in one process (enqueue only; sending happens in the background)."""
    import kiseki

    kiseki.set_tracking_uri(url)
    kiseki.set_experiment("bench-sdk-call")
    with kiseki.start_run():
        t = time.perf_counter()
        for i in range(calls):
            kiseki.log_metric("loss", 0.5, step=i)
        elapsed = time.perf_counter() - t
    return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--points", type=int, default=4_000_000, help="points per scenario (approx.)")
    args = parser.parse_args()
    print(f"machine: {machine_facts()}")
    with postgres() as database_url:
        asyncio.run(db.upgrade(database_url))
        print(f"database: {asyncio.run(postgres_version(database_url))}")
        with kiseki_server(database_url) as url:
            per_call = call_cost(url)
            print(f"log_metric call: {per_call * 1e6:.2f} µs mean over 1,000,000 calls (enqueue only)")
            for jobs in args.jobs:
                raw = run_http(url, jobs, 10_000, args.points)
                sdk = run_sdk(url, jobs, args.points // jobs)
                print(
                    f"jobs={jobs:>2}: raw HTTP 10k batches {raw['points_per_s']:>12,.0f} points/s | "
                    f"SDK fluent log_metric {sdk['points_per_s']:>12,.0f} points/s = "
                    f"{sdk['points_per_s'] / raw['points_per_s']:.0%} of raw",
                    flush=True,
                )


if __name__ == "__main__":
    main()
