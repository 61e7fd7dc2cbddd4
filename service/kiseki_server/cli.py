"""`kiseki server` and `kiseki db upgrade` (wired into the `kiseki` command by kiseki.cli)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from typing import Any

import pydantic

from kiseki_server import db, serving, startup
from kiseki_server.app import create_app
from kiseki_server.config import Settings
from kiseki_server.logs import configure_logging

log = logging.getLogger(__name__)


_SERVER_FLAGS: dict[str, dict[str, Any]] = {
    "host": {},
    "port": {"type": int},
    "default_artifact_root": {},
    "workers": {"type": int},
    "log_format": {"choices": ("text", "json")},
    "access_log": {"action": "store_true", "default": None},
    "shutdown_timeout": {"type": float},
    "auth": {"action": "store_true", "default": None},
    "allow_anonymous": {"action": "store_true", "default": None},
}
_COMMON_FLAGS: dict[str, dict[str, Any]] = {"database_url": {}, "data_dir": {}, "log_level": {}}


def _help(name: str) -> str:
    """A flag's help from its setting: the description, its environment variable and its default."""
    field = Settings.model_fields[name]
    default = field.default
    shown = "unset" if default is None else ("off" if default is False else str(default))
    if name == "default_artifact_root":
        shown = "the artifacts folder in the data folder"
    return f"{field.description} [env KISEKI_{name.upper()}; default: {shown}]".replace("%", "%%")


def add_arguments(server: argparse.ArgumentParser, upgrade: argparse.ArgumentParser) -> None:
    for parser in (server, upgrade):
        for name, options in _COMMON_FLAGS.items():
            parser.add_argument(f"--{name.replace('_', '-')}", help=_help(name), **options)
    for name, options in _SERVER_FLAGS.items():
        server.add_argument(f"--{name.replace('_', '-')}", help=_help(name), **options)


def _settings(args: argparse.Namespace) -> Settings:
    flags = (*_COMMON_FLAGS, *_SERVER_FLAGS)
    overrides: dict[str, Any] = {k: getattr(args, k) for k in flags if getattr(args, k, None) is not None}
    return Settings(**overrides)


def _database_url(settings: Settings) -> tuple[str, str]:
    """(dsn, what to print): the configured database (checked now), or the embedded one, started now."""
    if settings.database_url:
        asyncio.run(startup.check_database(settings.database_url))
        return settings.database_url, f"Postgres at {startup.describe_url(settings.database_url)}"
    from kiseki_server.embedded import start_postgres

    folder = settings.data_dir.resolve() / "postgres"
    try:
        server = start_postgres(settings.data_dir)
    except Exception as exc:
        raise startup.StartupError(
            f"the embedded Postgres in {folder} did not start ({type(exc).__name__}: {exc}); "
            "details with --log-level debug, or use your own Postgres with --database-url"
        ) from exc
    return server.get_uri(), f"embedded Postgres in {folder}"


def _run(command: Callable[[Settings], int], args: argparse.Namespace) -> int:
    """Settings, logging, then the command; a mistake the user can fix is one line on stderr, exit 1."""
    try:
        settings = _settings(args)
    except pydantic.ValidationError as exc:
        for problem in exc.errors(include_url=False):
            name = ".".join(str(part) for part in problem["loc"])
            print(
                f"kiseki: setting {name} (--{name.replace('_', '-')} or KISEKI_{name.upper()}): "
                f"{problem['msg']}",
                file=sys.stderr,
            )
        return 2
    configure_logging(settings)
    try:
        return command(settings)
    except startup.StartupError as exc:
        log.debug("start-up failed", exc_info=True)
        print(f"kiseki: {exc}", file=sys.stderr)
        return 1


def serve(args: argparse.Namespace) -> int:
    return _run(_serve, args)


def upgrade(args: argparse.Namespace) -> int:
    return _run(_upgrade, args)


def _serve(settings: Settings) -> int:
    url = f"http://{settings.host}:{settings.port}"
    startup.check_exposure(settings)
    startup.check_port(settings.host, settings.port)
    # Held until the process exits: a second server on the same embedded database is refused.
    lock = startup.lock_data_dir(settings.data_dir, url=url, exclusive=not settings.database_url)
    dsn, where = _database_url(settings)
    applied = asyncio.run(db.upgrade(dsn))
    asyncio.run(startup.check_auth_secret(dsn, settings))
    settings = settings.model_copy(update={"database_url": dsn})
    print(f"kiseki: data folder {settings.data_dir.resolve()}", flush=True)
    print(
        f"kiseki: metadata in {where}" + (f" (applied {len(applied)} migrations)" if applied else ""),
        flush=True,
    )
    print(f"kiseki: artifacts under {settings.artifact_root}", flush=True)
    api = f"(API at {url}/api/v1, OpenAPI at {url}/api/v1/openapi.json)"
    try:
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
            # The embedded Postgres, if any, was started above, once, by this process; workers connect.
            return workers.serve(settings, on_ready=announce)
        serving.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.shutdown_timeout,
            on_listening=lambda: print(f"kiseki: serving on {url}  {api}", flush=True),
        )
        return 0
    finally:
        lock.close()


def _upgrade(settings: Settings) -> int:
    dsn, where = _database_url(settings)
    applied = asyncio.run(db.upgrade(dsn))
    print(f"kiseki: {where} is up to date" + (f"; applied {', '.join(applied)}" if applied else ""))
    return 0
