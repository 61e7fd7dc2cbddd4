"""Safe by default, auth on or off: the Host allowlist (DNS rebinding), the Origin check (cross-site
writes), 415 for bodies that are not JSON, the refusal to serve anonymously on a public address; and the
credentials themselves: Basic passwords, token expiry and revocation, failure rate limits."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from kiseki_server.app import create_app
from kiseki_server.appkeys import POOL
from kiseki_server.auth import credentials
from kiseki_server.auth.middleware import allowed_hosts
from kiseki_server.config import Settings
from kiseki_server.startup import StartupError, check_exposure
from tests.authkit import ADMIN_TOKEN, auth_settings, bearer, make_user
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("host", "header", "status"),
    [
        ("127.0.0.1", "127.0.0.1:5000", 200),
        ("127.0.0.1", "localhost:5000", 200),
        ("127.0.0.1", "[::1]:5000", 200),
        ("127.0.0.1", "evil.example:5000", 403),  # a rebound DNS name pointing at 127.0.0.1
        ("127.0.0.1", "kiseki.example.org", 200),  # public_url's host
        ("0.0.0.0", "anything.example", 200),
    ],
)
async def test_host_allowlist(
    aiohttp_client: Any, settings: Settings, host: str, header: str, status: int
) -> None:
    changed = settings.model_copy(
        update={"host": host, "public_url": "https://kiseki.example.org", "allow_anonymous": True}
    )
    client = await aiohttp_client(create_app(changed))
    response = await client.get("/api/v1/experiments", headers={"Host": header})
    assert response.status == status, await response.text()
    if status == 403:
        assert "KISEKI_ALLOWED_HOSTS" in (await response.json())["error"]["message"]
    probe = await client.get("/healthz", headers={"Host": "10.1.2.3:5000"})
    assert probe.status == 200, "probes come with the pod's address as Host: always answered"


def test_allowed_hosts_setting() -> None:
    assert allowed_hosts(Settings(host="0.0.0.0", allowed_hosts="a.example, B.example")) == {
        "a.example",
        "b.example",
    }
    assert allowed_hosts(Settings(host="127.0.0.1", allowed_hosts="*")) is None


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 201),  # SDKs and mlflow send no Origin
        ({"Origin": "http://127.0.0.1:5000"}, 201),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
    ],
)
async def test_cross_site_writes_are_refused(
    client: TestClient, headers: dict[str, str], status: int
) -> None:
    response = await client.post(
        "/api/v1/experiments", json={"name": f"o{len(str(headers))}"}, headers=headers
    )
    assert response.status == status, await response.text()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_json_routes_refuse_other_bodies(client: TestClient, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await client.post("/api/v1/experiments", data=b'{"name": "sneaky"}', headers=headers)
    assert response.status == 415, await response.text()
    body = await response.json()
    assert body["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    listed = await client.get("/api/v1/experiments")
    assert "sneaky" not in await listed.text()


def test_public_address_with_auth_off_is_refused() -> None:
    with pytest.raises(StartupError, match="--allow-anonymous"):
        check_exposure(Settings(host="0.0.0.0"))
    check_exposure(Settings(host="127.0.0.1"))
    check_exposure(Settings(host="::1"))
    check_exposure(Settings(host="0.0.0.0", auth=True))
    check_exposure(Settings(host="0.0.0.0", allow_anonymous=True))


def test_kiseki_server_refuses_to_start_open_on_all_interfaces(tmp_path: Any) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kiseki", "server", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "KISEKI_DATA_DIR": str(tmp_path)},
    )
    assert result.returncode == 1
    assert "--auth" in result.stderr and "Traceback" not in result.stderr


def _basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


async def test_basic_auth_with_a_password_or_a_token(aiohttp_client: Any, settings: Settings) -> None:
    client = await aiohttp_client(create_app(auth_settings(settings)))
    dana = await make_user(client, "dana", password="correct horse")
    assert (await client.get("/api/v1/experiments", headers=_basic("dana", "correct horse"))).status == 200
    assert (await client.get("/api/v1/experiments", headers=_basic("dana", "wrong"))).status == 401
    assert (await client.get("/api/v1/experiments", headers=_basic("dana", dana.token))).status == 200
    assert (await client.get("/api/v1/experiments", headers={"Authorization": "Basic !!"})).status == 401
    response = await client.get("/api/v1/experiments", headers={"Authorization": "Token x"})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_revocation_and_expiry_take_effect_within_the_cache_time(
    aiohttp_client: Any, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(auth_settings(settings)))
    erin = await make_user(client, "erin")
    assert (await client.get("/api/v1/experiments", headers=erin.headers)).status == 200
    pool = client.server.app[POOL]
    await pool.execute("UPDATE api_tokens SET revoked_at = 1 WHERE user_id = $1", erin.user_id)
    await asyncio.sleep(settings.auth_cache_seconds + 0.1)
    response = await client.get("/api/v1/experiments", headers=erin.headers)
    assert response.status == 401
    assert "revoked" in (await response.json())["error"]["message"]
    frank = await make_user(client, "frank")
    await pool.execute("UPDATE users SET disabled_at = 1 WHERE user_id = $1", frank.user_id)
    response = await client.get("/api/v1/experiments", headers=frank.headers)
    assert response.status == 401 and "disabled" in await response.text()


async def test_failed_credentials_are_rate_limited_per_address(
    aiohttp_client: Any, settings: Settings
) -> None:
    client = await aiohttp_client(create_app(auth_settings(settings, auth_failure_limit=3)))
    assert (await client.get("/api/v1/experiments", headers=bearer(ADMIN_TOKEN))).status == 200
    for _ in range(3):
        assert (
            await client.get("/api/v1/experiments", headers=bearer(credentials.new_token()))
        ).status == 401
    response = await client.get("/api/v1/experiments", headers=bearer(credentials.new_token()))
    assert response.status == 429
    assert int(response.headers["Retry-After"]) >= 1
    await asyncio.sleep(settings.auth_cache_seconds + 0.1)
    response = await client.get("/api/v1/experiments", headers=bearer(ADMIN_TOKEN))
    assert response.status == 200, "a credential that worked lately is not locked out with the address"


def test_passwords_are_hashed_with_scrypt_and_checked_in_constant_time() -> None:
    stored = credentials.hash_password("correct horse")
    assert stored.startswith("scrypt$") and "correct" not in stored
    assert credentials.verify_password("correct horse", stored)
    assert not credentials.verify_password("correct horsf", stored)
    assert not credentials.verify_password("x", "not a hash")
    assert credentials.check_password_rules("short") is not None
    assert credentials.check_password_rules(credentials.new_token()) is not None
    assert credentials.hash_password("same") != credentials.hash_password("same"), "salted"


def test_tokens_are_random_and_stored_only_as_keyed_digests() -> None:
    token = credentials.new_token()
    assert credentials.looks_like_token(token) and len(token) == 47
    assert credentials.digest(b"k1", "token", token) != credentials.digest(b"k2", "token", token)
    assert credentials.digest(b"k", "token", token) != credentials.digest(b"k", "session", token)


async def test_a_different_auth_secret_is_refused_not_silently_used(database_url: str) -> None:
    """Tokens stored under one secret are useless under another: a replica or CLI with the wrong
    KISEKI_AUTH_SECRET (or none, once one was used) is told so instead of answering 401 to everyone."""
    import asyncpg

    from kiseki_server.auth.credentials import SecretMismatch
    from kiseki_server.startup import check_auth_secret
    from kiseki_server.stores.identities import IdentityStore

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        identities = IdentityStore(pool)
        random_key = await identities.auth_key(None)
        assert len(random_key) == 32 and await identities.auth_key(None) == random_key
        assert await identities.auth_key(b"first secret") == b"first secret"
        with pytest.raises(SecretMismatch, match="reset-secret"):
            await identities.auth_key(b"another secret")
        with pytest.raises(SecretMismatch, match="none is set"):
            await identities.auth_key(None)
        with pytest.raises(StartupError):
            await check_auth_secret(database_url, Settings(auth_secret="another secret"))
        user = await identities.create_user("gina")
        token = await identities.create_token(
            int(user.user_id), b"d" * 32, name="", scope="write", expires_at=None
        )
        assert await identities.reset_secret() == (1, 0)
        assert (await identities.get_token(int(token.token_id)))[0].revoked_at is not None
        assert await identities.auth_key(b"another secret") == b"another secret"
    finally:
        await pool.close()


async def test_open_routes_ignore_a_bad_credential(aiohttp_client: Any, settings: Settings) -> None:
    """The sign-in page (like signed data URLs) needs no credential, so a stale one does not block it."""
    client = await aiohttp_client(create_app(auth_settings(settings)))
    response = await client.get("/login", headers=bearer(credentials.new_token()))
    assert response.status == 200
    assert (await client.get("/api/v1/experiments", headers=bearer(credentials.new_token()))).status == 401
