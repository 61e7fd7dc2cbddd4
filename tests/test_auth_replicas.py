"""Two `kiseki server` replicas on one database with auth on: a token revoked through one is refused by
the other within a second (its cached lookup lives `auth_cache_seconds`), while the user's other tokens
keep working; both replicas agree on the auth secret kept in the database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

import kiseki
from kiseki_server.auth import credentials
from tests.conftest import create_database
from tests.servers import kiseki_server

ADMIN_TOKEN = credentials.new_token()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def make_token(http: aiohttp.ClientSession, url: str, name: str) -> tuple[str, str]:
    """(secret, token id) of a new write token of user admin, made through the admin API."""
    async with http.post(
        f"{url}/api/v1/tokens", json={"name": name, "scope": "write"}, headers=bearer(ADMIN_TOKEN)
    ) as r:
        assert r.status == 201, await r.text()
        body = await r.json()
    return body["token"], body["info"]["token_id"]


async def status(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(f"{url}/api/v1/whoami", headers=bearer(token)) as r:
        await r.read()
        return r.status


async def revoke_and_watch(url_a: str, url_b: str) -> tuple[str, float]:
    """Revoke a token (B has it cached) through A; returns it and how long B still accepted it."""
    async with aiohttp.ClientSession() as http:
        token, token_id = await make_token(http, url_a, "revoked")
        other, _ = await make_token(http, url_a, "kept")
        for _ in range(20):  # B has looked the token up and caches it
            assert await status(http, url_b, token) == 200, "a token made on A works on B"

        async with http.delete(f"{url_a}/api/v1/tokens/{token_id}", headers=bearer(ADMIN_TOKEN)) as r:
            assert r.status == 200, await r.text()
        revoked = time.monotonic()
        assert await status(http, url_a, token) == 401, "the replica that revoked refuses at once"
        while time.monotonic() - revoked < 3:
            if await status(http, url_b, token) == 401:
                refused_after = time.monotonic() - revoked
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("replica B still accepts the revoked token after 3 s")
        assert await status(http, url_b, other) == 200, "the user's other token still works on B"
        return token, refused_after


def test_a_token_revoked_on_one_replica_is_refused_by_the_other_within_a_second(
    postgres_url: str, template_url: str, tmp_path: Path
) -> None:
    database_url = create_database(postgres_url, "kiseki_test_auth_replicas")
    env = {"KISEKI_AUTH": "true", "KISEKI_ADMIN_TOKEN": ADMIN_TOKEN}
    args = ("--database-url", database_url)
    with (
        kiseki_server(*args, "--data-dir", str(tmp_path / "a"), env=env) as (url_a, _),
        kiseki_server(*args, "--data-dir", str(tmp_path / "b"), env=env) as (url_b, _),
    ):
        token, refused_after = asyncio.run(revoke_and_watch(url_a, url_b))
        assert refused_after < 1.0, f"replica B accepted the revoked token for {refused_after:.2f} s"
        with (
            kiseki.Client(url_b, token=token) as client,
            pytest.raises(kiseki.Unauthenticated, match="this token was revoked"),
        ):
            client.get_or_create_experiment("replicas")
