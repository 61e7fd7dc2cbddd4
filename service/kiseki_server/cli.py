"""`kiseki server` and `kiseki db upgrade` (wired into the `kiseki` command by kiseki.cli)."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from kiseki_server import db, serving
from kiseki_server.app import create_app
from kiseki_server.config import Settings
from kiseki_server.logs import configure_logging


def add_arguments(server: argparse.ArgumentParser, upgrade: argparse.ArgumentParser) -> None:
    for parser in (server, upgrade):
        parser.add_argument("--database-url", help="Postgres URL [env KISEKI_DATABASE_URL]; unset: embedded")
        parser.add_argument("--data-dir", help="data folder of the embedded default [env KISEKI_DATA_DIR]")
    server.add_argument("--host", help="bind address [env KISEKI_HOST, default 127.0.0.1]")
    server.add_argument("--port", type=int, help="port [env KISEKI_PORT, default 5000]")
    server.add_argument(
        "--default-artifact-root", help="artifact root of new experiments [env KISEKI_DEFAULT_ARTIFACT_ROOT]"
    )
    server.add_argument(
        "--workers", type=int, help="server processes sharing the port [env KISEKI_WORKERS, default 1]"
    )
    server.add_argument(
        "--log-format", choices=("text", "json"), help="log lines as text or JSON [env KISEKI_LOG_FORMAT]"
    )
    server.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log one line per request [env KISEKI_ACCESS_LOG]",
    )
    server.add_argument(
        "--shutdown-timeout",
        type=float,
        help="seconds in-flight requests get after SIGTERM [env KISEKI_SHUTDOWN_TIMEOUT, default 25]",
    )


def _settings(args: argparse.Namespace) -> Settings:
    flags = (
        "database_url",
        "data_dir",
        "host",
        "port",
        "default_artifact_root",
        "workers",
        "log_format",
        "access_log",
        "shutdown_timeout",
    )
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
    configure_logging(settings)
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
    api = f"(API at {url}/api/v1, OpenAPI at {url}/api/v1/openapi.json)"
    if settings.workers > 1:
        from kiseki_server import workers

        def announce(pids: list[int]) -> None:
            running = f"{len(pids)} worker processes (pids {', '.join(map(str, pids))})"
            print(f"kiseki: serving on {url} with {running}  {api}", flush=True)

        print(
            f"kiseki: {settings.workers} worker processes, each with up to {settings.db_pool_max_size} "
            "Postgres connections",
            flush=True,
        )
        # The embedded Postgres, if any, was started above, once, by this process; workers only connect.
        return workers.serve(settings, on_ready=announce)
    serving.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        on_listening=lambda: print(f"kiseki: serving on {url}  {api}", flush=True),
    )
    return 0


def upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings)
    dsn, where = _database_url(settings)
    applied = asyncio.run(db.upgrade(dsn))
    print(f"kiseki: {where} is up to date" + (f"; applied {', '.join(applied)}" if applied else ""))
    return 0
