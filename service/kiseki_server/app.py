"""The app factory: settings → Postgres pool → stores → routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from kiseki_server import db, limits, mlflow, openapi
from kiseki_server.appkeys import ARTIFACTS, POOL, SETTINGS, STORES
from kiseki_server.artifacts import open_artifact_store
from kiseki_server.auth import middleware as auth
from kiseki_server.auth.authorizer import Authorizer
from kiseki_server.auth.bootstrap import bootstrap
from kiseki_server.config import Settings
from kiseki_server.errors import error_middleware
from kiseki_server.handlers import admin, artifacts, experiments, metrics, ops, runs, search
from kiseki_server.routing import Route
from kiseki_server.serving import DRAIN, Drain
from kiseki_server.stores import Stores
from kiseki_server.telemetry import TELEMETRY, Telemetry, middleware
from kiseki_server.web import setup as setup_run_browser

ROUTES: list[Route] = [
    *experiments.ROUTES,
    *runs.ROUTES,
    *metrics.ROUTES,
    *search.ROUTES,
    *artifacts.ROUTES,
    *admin.ROUTES,
]
STREAMED = frozenset({artifacts.write_data, *mlflow.STREAMED})
"""Handlers that stream their body rather than read it whole: max_request_bytes does not apply."""
LIMITED = frozenset({metrics.log_batch, *mlflow.LIMITED})
"""The heavy writes that wait for a turn of the ingest limiter (see `limits`)."""


class SchemaNotReady(RuntimeError):
    """The database lacks migrations: run `kiseki db upgrade` (the service never migrates implicitly)."""


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.database_url:
        raise ValueError("create_app needs settings.database_url; `kiseki server` provides one")
    missing = await db.pending(settings.database_url)
    if missing:
        raise SchemaNotReady(
            f"the database lacks migrations {', '.join(missing)}: run `kiseki db upgrade` first"
        )
    pool = await db.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min_size,
        max_size=settings.db_pool_max_size,
        acquire_timeout=settings.db_acquire_timeout,
        retry_after=settings.retry_after_seconds,
    )
    app[POOL] = pool
    stores = app[STORES] = Stores.open(pool, artifact_root=settings.artifact_root)
    authorizer = app[auth.AUTHORIZER] = Authorizer(settings, stores.identities, stores.permissions)
    await authorizer.start()
    first_token = await bootstrap(settings, stores.identities, authorizer)
    if first_token:
        print(
            "kiseki: auth is on and there were no users: created user 'admin' with this admin token "
            f"(shown once; keep it):\n    {first_token}",
            flush=True,
        )
    yield
    await pool.close()


async def _artifacts(app: web.Application) -> AsyncIterator[None]:
    async with open_artifact_store(app[SETTINGS]) as store:
        app[ARTIFACTS] = store
        yield


async def _pool_gauges(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(app[TELEMETRY].sample_pool_forever(app[POOL]))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(settings: Settings, *, metrics_dir: str | None = None) -> web.Application:
    """The service. `metrics_dir`: prometheus-client's multiprocess folder, shared by `--workers`."""
    telemetry, drain = Telemetry(multiprocess_dir=metrics_dir), Drain()
    limiter = limits.Limiter(
        concurrency=settings.ingest_concurrency,
        queue=settings.ingest_queue,
        queue_bytes=settings.ingest_queue_bytes,
        timeout=settings.ingest_queue_timeout,
        retry_after=settings.retry_after_seconds,
    )
    refuse_early = limits.middleware(
        max_request_bytes=settings.max_request_bytes, streamed=STREAMED, limited=LIMITED, limiter=limiter
    )
    app = web.Application(
        client_max_size=settings.max_request_bytes,
        middlewares=[
            middleware(telemetry, drain, log_access=settings.access_log),
            error_middleware,
            auth.guard(settings),
            auth.authenticate,
            refuse_early,
        ],
    )
    app[SETTINGS] = settings
    app[auth.ROUTE_ACCESS] = {}
    app[auth.STREAMED_BODIES] = STREAMED
    app[TELEMETRY] = telemetry
    app[DRAIN] = drain
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_artifacts)
    app.cleanup_ctx.append(_pool_gauges)
    ops.add_routes(app)
    expect = limits.expect_handler(settings.max_request_bytes)
    for route in ROUTES:
        streamed = route.handler in STREAMED
        added = app.router.add_route(
            route.method, route.path, route.handler, expect_handler=None if streamed else expect
        )
        auth.protect(app, added, route.access)
    spec = openapi.build(ROUTES)

    async def openapi_document(request: web.Request) -> web.Response:
        return web.json_response(spec)

    auth.protect(app, app.router.add_get("/api/v1/openapi.json", openapi_document), None)
    mlflow.add_routes(app)
    setup_run_browser(app)
    return app
