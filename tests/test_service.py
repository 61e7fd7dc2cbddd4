"""Service-wide behaviour: OpenAPI document, settings docs, error shapes, schema checks."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp import web

from kiseki_server import db
from kiseki_server.app import ROUTES, SchemaNotReady, create_app
from kiseki_server.config import Settings
from tests.conftest import with_database
from tests.helpers import call


async def test_openapi_documents_every_route(client):
    spec = await call(client, "GET", "/api/v1/openapi.json")
    assert spec["openapi"].startswith("3.")
    for route in ROUTES:
        operation = spec["paths"][route.path][route.method.lower()]
        assert operation["summary"], f"{route.method} {route.path} needs a summary"
        if route.body is not None:
            assert "requestBody" in operation
    schemas = spec["components"]["schemas"]
    assert {"LogBatch", "Run", "Experiment", "ErrorResponse"} <= set(schemas)


def test_every_setting_is_documented():
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/api/v1/nothing-here", 404), ("PUT", "/api/v1/experiments", 405)],
)
async def test_http_errors_are_json(client, method, path, status):
    error = (await call(client, method, path, status))["error"]
    assert error["code"]
    assert error["message"]


async def test_service_refuses_an_unmigrated_database(postgres_url, settings):
    admin = await asyncpg.connect(postgres_url)
    await admin.execute("DROP DATABASE IF EXISTS kiseki_test_empty")
    await admin.execute("CREATE DATABASE kiseki_test_empty")
    await admin.close()
    empty = with_database(postgres_url, "kiseki_test_empty")
    runner = web.AppRunner(create_app(settings.model_copy(update={"database_url": empty})))
    with pytest.raises(SchemaNotReady, match="kiseki db upgrade"):
        await runner.setup()
    await runner.cleanup()
    assert await db.upgrade(empty) == [name for _, name, _ in db.migration_files()]
    assert await db.upgrade(empty) == [], "upgrade is idempotent"
    assert await db.pending(empty) == []
