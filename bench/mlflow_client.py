"""The unmodified `mlflow` client against kiseki (issue 12): log_batch throughput and history reads.

    python -m bench.mlflow_client                  # 1 and 8 jobs, 40 calls of 1,000 metrics each
    python -m bench.mlflow_client --jobs 8 32      # other job counts

Each job is a process with its own run calling `MlflowClient().log_batch` with 1,000 metrics per call
(MLflow's per-call maximum), as a training loop using MLflow's client does. Then one process reads a
100,000-point history with `get_metric_history`, and times single `log_metric` calls (MLflow's
synchronous client sends one point per request). A fresh durable Postgres and one `kiseki server`
process run on this machine. Comparing with MLflow's own server needs the full `mlflow` package, which
is not a dependency: run the same script against it with `--url`.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
from typing import Any

from bench.common import kiseki_server, machine_facts, postgres, postgres_version
from kiseki_server import db

CALLS = 40
BATCH = 1000


def _quiet_mlflow() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "1")


_BARRIER: Any = None


def _init(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


def _job(args: tuple[str, str, int]) -> tuple[float, float]:
    _quiet_mlflow()
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    url, experiment_id, calls = args
    client = MlflowClient(tracking_uri=url)
    run_id = client.create_run(experiment_id).info.run_id
    now = int(time.time() * 1000)
    batches = [[Metric(f"m{j % 10}", float(j), now, i) for j in range(BATCH)] for i in range(calls)]
    _BARRIER.wait()  # all jobs start together, after their (slow) imports
    start = time.perf_counter()
    for batch in batches:
        client.log_batch(run_id, metrics=batch)
    return start, time.perf_counter()


def log_batch_rate(url: str, jobs: int, calls: int) -> float:
    _quiet_mlflow()
    from mlflow import MlflowClient

    experiment_id = MlflowClient(tracking_uri=url).create_experiment(f"bench-{time.time_ns()}")
    context = mp.get_context("spawn")
    with context.Pool(jobs, initializer=_init, initargs=(context.Barrier(jobs),)) as pool:
        spans = pool.map(_job, [(url, experiment_id, calls)] * jobs)
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    return jobs * calls * BATCH / elapsed


def history_and_single_calls(url: str) -> tuple[float, float]:
    _quiet_mlflow()
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(tracking_uri=url)
    run_id = client.create_run(client.create_experiment(f"history-{time.time_ns()}")).info.run_id
    now = int(time.time() * 1000)
    for i in range(100):
        client.log_batch(run_id, metrics=[Metric("loss", float(j), now, i * BATCH + j) for j in range(BATCH)])
    start = time.perf_counter()
    assert len(client.get_metric_history(run_id, "loss")) == 100_000
    history = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(200):
        client.log_metric(run_id, "single", 1.0, step=step)
    return history, (time.perf_counter() - start) / 200


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--calls", type=int, default=CALLS, help="log_batch calls per job")
    parser.add_argument("--url", help="measure this server instead of starting kiseki")
    args = parser.parse_args()
    print(f"machine: {machine_facts()}")

    def measure(url: str) -> None:
        for jobs in args.jobs:
            rate = log_batch_rate(url, jobs, args.calls)
            print(f"jobs={jobs:>2}: mlflow log_batch of {BATCH} metrics: {rate:>10,.0f} points/s", flush=True)
        history, single = history_and_single_calls(url)
        print(f"mlflow get_metric_history of 100,000 points: {history:.2f} s")
        print(f"mlflow log_metric, one point per request: {single * 1000:.2f} ms per call")

    if args.url:
        measure(args.url)
        return
    with postgres() as database_url:
        asyncio.run(db.upgrade(database_url))
        print(f"database: {asyncio.run(postgres_version(database_url))}")
        with kiseki_server(database_url) as url:
            measure(url)


if __name__ == "__main__":
    main()
