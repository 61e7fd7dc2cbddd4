"""Every route of the app, walked with every kind of caller: no route is left open by accident.

The walk reads the app's own router (kiseki's /api/v1 routes, MLflow's, the run browser's, the admin
API), so a route added later is walked too, and one missing from the access table fails here (the
middleware would refuse it to everyone but admins). For each route: anonymous → 401 (pages: a redirect
to the sign-in page); an expired or a revoked token → 401; a read-scoped token on a write route → 403;
a user with NONE on the experiment the request names → never a 2xx; a non-admin on an admin route → 403.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.web_urldispatcher import DynamicResource, PlainResource, StaticResource

from kiseki_server.app import create_app
from kiseki_server.appkeys import POOL
from kiseki_server.auth.middleware import ROUTE_ACCESS
from kiseki_server.auth.policy import Access, Level, Scope
from kiseki_server.config import Settings
from tests.authkit import ADMIN_TOKEN, Person, auth_settings, bearer, grant, make_user

_ALWAYS_OPEN = {"/healthz", "/readyz"}


@dataclass(frozen=True, slots=True)
class World:
    client: TestClient
    experiment_id: str
    run_id: str
    alice: Person
    """Owns the experiment (MANAGE) and its run."""
    bob: Person
    """Write-scoped, NONE on alice's experiment."""
    reader: Person
    """Read-scoped token, default READ everywhere."""
    expired: Person
    revoked: Person


@pytest.fixture
async def world(aiohttp_client: Any, settings: Settings) -> World:
    client = await aiohttp_client(create_app(auth_settings(settings)))
    alice = await make_user(client, "alice")
    bob = await make_user(client, "bob")
    reader = await make_user(client, "reader", scope="read")
    expired = await make_user(client, "expired", expires_at=int(time.time() * 1000) - 1000)
    revoked = await make_user(client, "revoked")
    pool = client.server.app[POOL]
    await pool.execute("UPDATE api_tokens SET revoked_at = 1 WHERE user_id = $1", revoked.user_id)
    response = await client.post("/api/v1/experiments", json={"name": "private"}, headers=alice.headers)
    assert response.status == 201, await response.text()
    experiment_id = (await response.json())["experiment_id"]
    response = await client.post("/api/v1/runs", json={"experiment_id": experiment_id}, headers=alice.headers)
    assert response.status == 201, await response.text()
    run_id = (await response.json())["info"]["run_id"]
    await grant(client, experiment_id, bob, Level.NONE)
    return World(client, experiment_id, run_id, alice, bob, reader, expired, revoked)


def _routes(app: web.Application) -> list[tuple[str, str, web.AbstractRoute]]:
    """(method, URL template, route) for every route but implicit HEADs and static files."""
    found = []
    for route in app.router.routes():
        resource = route.resource
        if route.method == "HEAD" or isinstance(resource, StaticResource) or resource is None:
            continue
        assert isinstance(resource, (PlainResource, DynamicResource)), resource
        method = "POST" if route.method == "*" else route.method  # catch-alls: a write is the worst case
        found.append((method, resource.canonical, route))
    return found


def _url(template: str, world: World) -> str:
    values = {
        "experiment_id": world.experiment_id,
        "run_id": world.run_id,
        "user_name": "alice",
        "token_id": "1",
        "path": f"{world.experiment_id}/{world.run_id}/artifacts/x.txt",
        "tail": "anything",
    }
    return re.sub(r"{(\w+)(?::[^}]*)?}", lambda m: values.get(m.group(1), "x"), template)


def _body(world: World) -> dict[str, Any]:
    """One body naming alice's experiment and run under every field name the routes read ids from."""
    return {
        "experiment_id": world.experiment_id,
        "experiment_ids": [world.experiment_id],
        "run_id": world.run_id,
        "run_uuid": world.run_id,
        "key": "k",
        "value": "1",
        "name": "renamed",
        "new_name": "renamed",
        "timestamp": 1,
        "step": 0,
    }


def _query(world: World) -> dict[str, str]:
    return {
        "experiment_id": world.experiment_id,
        "run_id": world.run_id,
        "run_uuid": world.run_id,
        "experiment_name": "private",
        "name": "private",
        "metric_key": "k",
        "key": "k",
        "path": "x.txt",
    }


async def _call(world: World, method: str, url: str, headers: dict[str, str]) -> int:
    kwargs: dict[str, Any] = {"headers": headers, "allow_redirects": False, "params": _query(world)}
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        kwargs["json"] = _body(world)
    async with world.client.request(method, url, **kwargs) as response:
        await response.read()
        return response.status


def _is_page(url: str) -> bool:
    return not url.startswith(("/api/", "/ajax-api/")) and url != "/metrics"


async def test_every_route_is_in_the_access_table(world: World) -> None:
    app = world.client.server.app
    table = app[ROUTE_ACCESS]
    missing = [f"{m} {t}" for m, t, route in _routes(app) if route not in table]
    assert not missing, f"routes without an Access (refused to all but admins): {missing}"


async def test_anonymous_expired_and_revoked_callers_are_refused(world: World) -> None:
    app = world.client.server.app
    table = app[ROUTE_ACCESS]
    wrong: list[str] = []
    for method, template, route in _routes(app):
        access = table.get(route)
        if access is None or template in _ALWAYS_OPEN:
            continue
        url = _url(template, world)
        for who, headers in (
            ("anonymous", {}),
            ("expired", world.expired.headers),
            ("revoked", world.revoked.headers),
            ("garbage", bearer("ksk_" + "x" * 43)),
        ):
            status = await _call(world, method, url, headers)
            # A browser with no credential is sent to the sign-in page; a bad credential sent
            # explicitly is a 401 wherever it goes.
            expected = {302} if _is_page(url) and method == "GET" and who == "anonymous" else {401}
            if status not in expected:
                wrong.append(f"{who} {method} {url}: {status}")
    assert not wrong, "\n".join(wrong)


async def test_a_read_token_cannot_write_anywhere(world: World) -> None:
    app = world.client.server.app
    table = app[ROUTE_ACCESS]
    wrong = []
    for method, template, route in _routes(app):
        access = table.get(route)
        if access is None or access.scope <= Scope.READ:
            continue
        url = _url(template, world)
        status = await _call(world, method, url, world.reader.headers)
        if status != 403:
            wrong.append(f"{method} {url}: {status}")
    assert not wrong, "read-scoped token got past a write route:\n" + "\n".join(wrong)


async def test_a_user_without_permission_gets_nothing_of_the_experiment(world: World) -> None:
    """Bob (NONE on alice's experiment) calls every experiment-bound route naming it: no 2xx, ever;
    routes that check the path are a 403 exactly."""
    app = world.client.server.app
    table = app[ROUTE_ACCESS]
    wrong = []
    walked = 0
    for method, template, route in _routes(app):
        access: Access | None = table.get(route)
        if access is None or access.level is None:
            continue
        url = _url(template, world)
        status = await _call(world, method, url, world.bob.headers)
        walked += 1
        if 200 <= status < 300 or (access.target == "path" and status != 403):
            wrong.append(f"{method} {url} ({access.target}): {status}")
    assert walked >= 20
    assert not wrong, "a user with NONE reached the experiment:\n" + "\n".join(wrong)


async def test_admin_routes_need_an_admin(world: World) -> None:
    app = world.client.server.app
    table = app[ROUTE_ACCESS]
    wrong = []
    for method, template, route in _routes(app):
        access = table.get(route)
        if access is None or not access.admin_only:
            continue
        url = _url(template, world)
        status = await _call(world, method, url, world.alice.headers)
        if status != 403:
            wrong.append(f"{method} {url}: {status}")
        admin_status = await _call(world, method, url, bearer(ADMIN_TOKEN))
        if admin_status in (401, 403):
            wrong.append(f"admin {method} {url}: {admin_status}")
    assert not wrong, "\n".join(wrong)


async def test_the_owner_and_admin_can_read_what_others_cannot(world: World) -> None:
    path = f"/api/v1/experiments/{world.experiment_id}"
    for person, expected in ((world.alice, 200), (world.bob, 403), (world.reader, 200)):
        response = await world.client.get(path, headers=person.headers)
        assert response.status == expected, f"{person.name}: {response.status}"
    response = await world.client.get(path, headers=bearer(ADMIN_TOKEN))
    assert response.status == 200
