"""`kiseki server` and `kiseki db upgrade` (wired into the `kiseki` command by kiseki.cli)."""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from aiohttp import web

from kiseki_server import db
from kiseki_server.app import create_app
from kiseki_server.config import Settings


def add_arguments(server: argparse.ArgumentParser, upgrade: argparse.ArgumentParser) -> None:
    for parser in (server, upgrade):
        parser.add_argument("--database-url", help="Postgres URL [env KISEKI_DATABASE_URL]; unset: embedded")
        parser.add_argument("--data-dir", help="data folder of the embedded default [env KISEKI_DATA_DIR]")
    server.add_argument("--host", help="bind address [env KISEKI_HOST, default 127.0.0.1]")
    server.add_argument("--port", type=int, help="port [env KISEKI_PORT, default 5000]")
    server.add_argument(
        "--default-artifact-root", help="artifact root of new experiments [env KISEKI_DEFAULT_ARTIFACT_ROOT]"
    )


def _settings(args: argparse.Namespace) -> Settings:
    flags = ("database_url", "data_dir", "host", "port", "default_artifact_root")
    overrides: dict[str, Any] = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    return Settings(**overrides)


def _database_url(settings: Settings) -> tuple[str, str]:
    """(dsn, what to print): the configured database, or the embedded one, started now."""
    if settings.database_url:
        return settings.database_url, "the configured Postgres"
    from kiseki_server.embedded import start_postgres

    server = start_postgres(settings.data_dir)
    return server.get_uri(), f"embedded Postgres in {settings.data_dir.resolve() / 'postgres'}"


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    dsn, where = _database_url(settings)
    applied = asyncio.run(db.upgrade(dsn))
    settings = settings.model_copy(update={"database_url": dsn})
    url = f"http://{settings.host}:{settings.port}"
    print(f"kiseki: data folder {settings.data_dir.resolve()}", flush=True)
    print(
        f"kiseki: metadata in {where}" + (f" (applied {len(applied)} migrations)" if applied else ""),
        flush=True,
    )
    print(f"kiseki: artifacts under {settings.artifact_root}", flush=True)
    ready = f"kiseki: serving on {url}  (API at {url}/api/v1, OpenAPI at {url}/api/v1/openapi.json)"
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        print=lambda _: print(ready, flush=True),  # called once the socket is listening
        access_log=None,
        shutdown_timeout=30,
    )
    return 0


def upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    dsn, where = _database_url(settings)
    applied = asyncio.run(db.upgrade(dsn))
    print(f"kiseki: {where} is up to date" + (f"; applied {', '.join(applied)}" if applied else ""))
    return 0
