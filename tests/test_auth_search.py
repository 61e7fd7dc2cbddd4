"""Searches and listings only ever show what the caller may read: the permission is part of the SQL
statement, so neither a page nor a page token (replayed from another user, or crafted) reaches past it."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from kiseki_server.app import create_app
from kiseki_server.auth.policy import Level
from kiseki_server.config import Settings
from tests.authkit import Person, auth_settings, grant, make_user


async def _experiment(client: TestClient, person: Person, name: str, runs: int) -> str:
    response = await client.post("/api/v1/experiments", json={"name": name}, headers=person.headers)
    assert response.status == 201, await response.text()
    experiment_id: str = (await response.json())["experiment_id"]
    for _ in range(runs):
        created = await client.post(
            "/api/v1/runs", json={"experiment_id": experiment_id}, headers=person.headers
        )
        assert created.status == 201
    return experiment_id


async def _all_runs(client: TestClient, person: Person, body: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    token = None
    while True:
        page = await client.post(
            "/api/v1/runs/search",
            json={**body, "max_results": 2, **({"page_token": token} if token else {})},
            headers=person.headers,
        )
        assert page.status == 200, await page.text()
        data = await page.json()
        runs += data["runs"]
        token = data.get("next_page_token")
        if not token:
            return runs


@pytest.fixture(params=["explicit none", "default none"])
async def setup(request: pytest.FixtureRequest, aiohttp_client: Any, settings: Settings) -> Any:
    """Alice's private experiment (bob has NONE on it, explicitly or by default) and bob's own one."""
    default = "none" if request.param == "default none" else "read"
    client = await aiohttp_client(create_app(auth_settings(settings, default_permission=default)))
    alice, bob = await make_user(client, "alice"), await make_user(client, "bob")
    private = await _experiment(client, alice, "alice-private", 5)
    own = await _experiment(client, bob, "bob-own", 3)
    if default == "read":
        await grant(client, private, bob, Level.NONE)
    return client, alice, bob, private, own


async def test_run_search_never_returns_unreadable_runs(setup: Any) -> None:
    client, alice, bob, private, own = setup
    runs = await _all_runs(client, bob, {})
    assert {r["info"]["experiment_id"] for r in runs} == {own}
    assert len(runs) == 3
    assert len(await _all_runs(client, alice, {})) >= 5
    response = await client.post(
        "/api/v1/runs/search", json={"experiment_ids": [private, own]}, headers=bob.headers
    )
    assert response.status == 403, "naming an unreadable experiment is refused, not silently emptied"


async def test_experiment_listings_hide_unreadable_experiments(setup: Any) -> None:
    client, alice, bob, private, own = setup
    listed = await (await client.get("/api/v1/experiments", headers=bob.headers)).json()
    assert [e["experiment_id"] for e in listed["experiments"]] == [own]
    searched = await client.post("/api/v1/experiments/search", json={}, headers=bob.headers)
    assert [e["experiment_id"] for e in (await searched.json())["experiments"]] == [own]
    by_name = await client.get(
        "/api/v1/experiments/by-name", params={"name": "alice-private"}, headers=bob.headers
    )
    assert by_name.status == 403
    alice_sees = await (await client.get("/api/v1/experiments", headers=alice.headers)).json()
    assert private in [e["experiment_id"] for e in alice_sees["experiments"]]


async def test_page_tokens_cannot_reach_past_the_permission(setup: Any) -> None:
    client, alice, bob, _private, own = setup
    # Alice's token is for alice's search: replayed by bob it is refused.
    first = await client.post("/api/v1/runs/search", json={"max_results": 1}, headers=alice.headers)
    token = (await first.json())["next_page_token"]
    replay = await client.post(
        "/api/v1/runs/search", json={"max_results": 1, "page_token": token}, headers=bob.headers
    )
    assert replay.status == 400
    # Bob's own token, its cursor rewound to the very start: still only bob's runs.
    mine = await client.post("/api/v1/runs/search", json={"max_results": 1}, headers=bob.headers)
    raw = (await mine.json())["next_page_token"]
    fingerprint, segment, cursor = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    crafted_cursor = [2**62 if isinstance(v, int) else "f" * 32 for v in cursor]
    crafted = (
        base64.urlsafe_b64encode(orjson.dumps([fingerprint, segment, crafted_cursor])).decode().rstrip("=")
    )
    response = await client.post(
        "/api/v1/runs/search", json={"max_results": 100, "page_token": crafted}, headers=bob.headers
    )
    if response.status == 200:
        assert {r["info"]["experiment_id"] for r in (await response.json())["runs"]} <= {own}
    else:
        assert response.status == 400


async def test_granting_read_shows_the_experiment(setup: Any) -> None:
    client, _alice, bob, private, own = setup
    await grant(client, private, bob, Level.READ)
    runs = await _all_runs(client, bob, {})
    assert {r["info"]["experiment_id"] for r in runs} == {own, private}
    response = await client.post("/api/v1/runs", json={"experiment_id": private}, headers=bob.headers)
    assert response.status == 403, "READ does not allow creating runs (EDIT does)"
