"""The app factory: settings → Postgres pool → stores → routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from kiseki_server import db, openapi
from kiseki_server.appkeys import ARTIFACTS, POOL, SETTINGS, STORES
from kiseki_server.artifacts import open_artifact_store
from kiseki_server.config import Settings
from kiseki_server.errors import error_middleware
from kiseki_server.handlers import artifacts, experiments, metrics, runs, search
from kiseki_server.routing import Route
from kiseki_server.stores import Stores

ROUTES: list[Route] = [*experiments.ROUTES, *runs.ROUTES, *metrics.ROUTES, *search.ROUTES, *artifacts.ROUTES]


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
        settings.database_url, min_size=settings.db_pool_min_size, max_size=settings.db_pool_max_size
    )
    app[POOL] = pool
    app[STORES] = Stores.open(pool, artifact_root=settings.artifact_root)
    yield
    await pool.close()


async def _artifacts(app: web.Application) -> AsyncIterator[None]:
    async with open_artifact_store(app[SETTINGS]) as store:
        app[ARTIFACTS] = store
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_request_bytes, middlewares=[error_middleware])
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_artifacts)
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler)
    spec = openapi.build(ROUTES)

    async def openapi_document(request: web.Request) -> web.Response:
        return web.json_response(spec)

    app.router.add_get("/api/v1/openapi.json", openapi_document)
    return app
