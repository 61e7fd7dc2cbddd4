"""Postgres connections and schema migrations."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process that migrates this database.
_MIGRATION_LOCK = 0x6B6973656B69  # "kiseki"


async def _init_connection(conn: asyncpg.Connection) -> None:
    # UUIDs travel as 32-hex strings in the API; decode them once here rather than in every query.
    await conn.set_type_codec("uuid", encoder=str, decoder=lambda u: u.replace("-", ""), schema="pg_catalog")


async def create_pool(dsn: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=300
    )
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
