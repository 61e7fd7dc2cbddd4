"""Postgres connections and schema migrations.

The service's pool (`Pool`) turns Postgres being unreachable into a 503 with `Retry-After` instead of a
500 per request: errors met while getting a connection (refused, the socket gone, too many connections,
the server starting or shutting down, no free connection within `acquire_timeout`) and connections lost
mid-query become `DatabaseUnavailable`, logged once per outage (`OutageLog`) rather than once per request.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from kiseki_server.errors import ServiceUnavailable

log = logging.getLogger(__name__)

OUTAGE_LOG_INTERVAL = 30.0
"""Seconds between the "still unavailable" lines of one outage (each with the count of refused requests)."""

LOST_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # includes ConnectionDoesNotExistError: the connection died mid-query
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    ConnectionError,
)
"""Errors of a query that say the server or the connection went away, not that the query was wrong."""


class DatabaseUnavailable(ServiceUnavailable):
    """Postgres cannot be reached (or no connection is free): the request was not carried out."""


def _lost_connection(exc: BaseException) -> bool:
    if isinstance(exc, LOST_CONNECTION_ERRORS):
        return True
    # asyncpg says "connection is closed" (an InterfaceError) when a query meets a connection that died,
    # and, when Postgres terminated it while it sat idle in the pool, may instead find its protocol in
    # the middle of that termination ("cannot switch to state …; another operation … is in progress").
    if isinstance(exc, asyncpg.InternalClientError):
        return "another operation" in str(exc)
    return isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)


class OutageLog:
    """One log line when Postgres becomes unreachable, then at most one per `interval` seconds with the
    number of requests refused meanwhile, and one when it answers again: an outage under load would
    otherwise write a traceback per request."""

    def __init__(self, *, interval: float = OUTAGE_LOG_INTERVAL) -> None:
        self.interval = interval
        self.since: float | None = None
        self._refused = 0
        self._total = 0
        self._logged_at = 0.0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        cause = f"{type(exc).__name__}: {exc}".rstrip(": ")
        if self.since is None:
            self.since, self._logged_at, self._refused, self._total = now, now, 0, 1
            log.error("Postgres is unavailable (%s); answering 503 until it is back", cause)
            return
        self._refused += 1
        self._total += 1
        if now - self._logged_at >= self.interval:
            log.error(
                "Postgres still unavailable after %.0f s (%s); %d more requests refused",
                now - self.since,
                cause,
                self._refused,
            )
            self._logged_at, self._refused = now, 0

    def succeeded(self) -> None:
        if self.since is not None:
            log.warning(
                "Postgres is available again after %.1f s; %d requests were refused",
                time.monotonic() - self.since,
                self._total,
            )
            self.since = None


class Pool(asyncpg.Pool):  # type: ignore[misc]  # asyncpg ships no type hints
    """asyncpg's pool with a bounded wait for a connection and Postgres outages answered as 503s.

    Every use of the pool goes through `acquire` (asyncpg's own `fetch`, `execute`, ... included), so
    translating there covers every store.
    """

    __slots__ = ("acquire_timeout", "outages", "retry_after")

    acquire_timeout: float
    outages: OutageLog
    retry_after: int

    def acquire(self, *, timeout: float | None = None) -> _Acquire:
        return _Acquire(self, self.acquire_timeout if timeout is None else timeout)


class _Acquire:
    """`async with pool.acquire() as conn` (or `await pool.acquire()`), translating outages."""

    __slots__ = ("_inner", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._inner = asyncpg.Pool.acquire(pool, timeout=timeout)

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailable:
        self._pool.outages.failed(exc)
        return DatabaseUnavailable(
            "the database is unavailable; retry shortly", retry_after=self._pool.retry_after
        )

    async def __aenter__(self) -> PoolConnectionProxy:
        try:
            return await self._inner.__aenter__()
        except TimeoutError:
            raise DatabaseUnavailable(
                f"the service is busy: no database connection became free within {self._timeout:g} s; "
                "retry shortly",
                retry_after=self._pool.retry_after,
            ) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # Nothing of the request ran yet: whatever failed here was getting a working connection.
            raise self._unavailable(exc) from exc

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._inner.__aexit__(kind, exc, tb)
        except Exception as release_error:
            if exc is None and not _lost_connection(release_error):
                raise
            exc = exc or release_error
        if exc is None:
            self._pool.outages.succeeded()
        elif _lost_connection(exc):
            raise self._unavailable(exc) from exc

    def __await__(self) -> Any:
        return self.__aenter__().__await__()


# Any constant works; it only has to be the same for every process that migrates this database.
_MIGRATION_LOCK = 0x6B6973656B69  # "kiseki"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # UUIDs travel as 32-hex strings in the API; decode them once here rather than in every query.
    await conn.set_type_codec("uuid", encoder=str, decoder=lambda u: u.replace("-", ""), schema="pg_catalog")


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, acquire_timeout: float = 30.0, retry_after: int = 1
) -> Pool:
    """The service's pool; `acquire_timeout` bounds a request's wait for a free connection."""
    pool = Pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        max_inactive_connection_lifetime=300.0,
        init=_init_connection,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=300,
    )
    pool.acquire_timeout, pool.retry_after, pool.outages = acquire_timeout, retry_after, OutageLog()
    await pool
    return pool


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every bundled migration, in order."""
    found = []
    for entry in resources.files("kiseki_server.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def upgrade(dsn_or_conn: str | asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks; returns their names.

    Idempotent, and safe when several replicas start at once: a session advisory lock serialises them
    and each migration commits together with its row in `schema_migrations`.
    """
    conn: Any = await asyncpg.connect(dsn_or_conn) if isinstance(dsn_or_conn, str) else dsn_or_conn
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in migration_files():
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                    )
                log.info("applied migration %s", name)
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    finally:
        if isinstance(dsn_or_conn, str):
            await conn.close()
    return applied


async def pending(dsn: str) -> list[str]:
    """Names of migrations not yet applied (the service refuses to start on an unmigrated schema)."""
    conn = await asyncpg.connect(dsn)
    try:
        exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        done = (
            {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            if exists
            else set()
        )
    finally:
        await conn.close()
    return [name for version, name, _ in migration_files() if version not in done]
