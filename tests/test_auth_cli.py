"""The real `kiseki users …` / `kiseki tokens …` commands (subprocesses) on a test database, checked
against a server that uses that database: what the CLI makes, the server accepts; what it revokes, the
server refuses within auth_cache_seconds."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from kiseki_server.app import create_app
from kiseki_server.appkeys import POOL
from kiseki_server.auth import credentials
from kiseki_server.config import Settings
from tests.authkit import auth_settings, bearer
from tests.servers import kiseki_server

PASSWORD = "a long enough password"


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


def _env(**extra: str) -> dict[str, str]:
    """The caller's environment without kiseki settings a developer may have exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KISEKI_") or k == "KISEKI_SPOOL_DIR"}
    return {**env, **extra}


async def kiseki(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Done:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kiseki",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env or _env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else b""), 60)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def ok(*args: str, **kwargs: Any) -> Done:
    done = await kiseki(*args, **kwargs)
    assert done.code == 0, f"kiseki {' '.join(args)} failed ({done.code}): {done.err}"
    return done


async def _status(client: TestClient, token: str, path: str = "/api/v1/whoami") -> tuple[int, Any]:
    async with client.get(path, headers=bearer(token)) as response:
        return response.status, await response.json()


async def _eventually(
    client: TestClient, headers: dict[str, str], status: int, seconds: float = 1.0
) -> float:
    """Seconds until GET /whoami with `headers` answers `status` (fails after `seconds`)."""
    start = time.monotonic()
    while True:
        async with client.get("/api/v1/whoami", headers=headers) as response:
            if response.status == status:
                return time.monotonic() - start
        assert time.monotonic() - start < seconds, f"not {status} after {seconds} s"
        await asyncio.sleep(0.05)


@pytest.fixture
async def server(aiohttp_client: Any, settings: Settings) -> TestClient:
    """An auth-on app on the test's database (the CLI runs on the same one)."""
    client: TestClient = await aiohttp_client(create_app(auth_settings(settings)))
    return client


async def test_users_and_tokens_made_by_the_cli_work_on_the_server(
    server: TestClient, database_url: str
) -> None:
    db = ("--database-url", database_url)
    done = await ok("users", "create", "alice", *db)
    assert "created user alice" in done.out
    await ok("users", "create", "ci-bot", "--service", *db)
    done = await ok("tokens", "create", "--user", "alice", "--name", "laptop", "--expires-in", "30", *db)
    token = done.out.strip()
    assert done.out == token + "\n", "the token is alone on stdout, for TOKEN=$(kiseki tokens create …)"
    assert credentials.looks_like_token(token)
    assert "shown only now" in done.err and "write scope" in done.err

    status, body = await _status(server, token)
    assert status == 200 and body["user"] == "alice" and body["scope"] == "write"
    async with server.post("/api/v1/experiments", json={"name": "cli-made"}, headers=bearer(token)) as r:
        assert r.status == 201, "a write token logs"

    read = (await ok("tokens", "create", "--user", "ci-bot", "--scope", "read", *db)).out.strip()
    assert (await _status(server, read))[1]["scope"] == "read"

    listing = (await ok("tokens", "list", *db)).out
    assert token not in listing and read not in listing, "secrets are never listed"
    lines = listing.splitlines()
    assert lines[0].split()[:4] == ["ID", "USER", "NAME", "SCOPE"]
    laptop = next(line for line in lines if " laptop " in line)
    assert laptop.split()[1] == "alice"
    only = (await ok("tokens", "list", "--user", "ci-bot", *db)).out.splitlines()
    assert len(only) == 2 and "ci-bot" in only[1]
    users = (await ok("users", "list", *db)).out
    assert "alice" in users and "ci-bot" in users and "service" in users

    token_id = laptop.split()[0]
    done = await ok("tokens", "revoke", token_id, *db)
    assert f"revoked token {token_id} of alice" in done.out
    await _eventually(server, bearer(token), 401)
    assert (await _status(server, read))[0] == 200, "only the revoked token stops"

    events = await server.server.app[POOL].fetch("SELECT user_name, action FROM audit_log ORDER BY event_id")
    actions = [e["action"] for e in events if e["user_name"].startswith("cli:")]
    assert actions == ["user.create", "user.create", "token.create", "token.create", "token.revoke"]


async def test_passwords_and_disabling(server: TestClient, database_url: str) -> None:
    db = ("--database-url", database_url)
    await ok("users", "create", "bob", "--password-stdin", *db, stdin=PASSWORD + "\n")
    basic = {"Authorization": "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()}
    async with server.get("/api/v1/whoami", headers=basic) as response:
        assert response.status == 200 and (await response.json())["via"] == "password"

    await ok("users", "set-password", "bob", *db, stdin="another long password\n")
    await _eventually(server, basic, 401)  # the old password stops working

    token = (await ok("tokens", "create", "--user", "bob", *db)).out.strip()
    assert (await _status(server, token))[0] == 200
    await ok("users", "disable", "bob", *db)
    await _eventually(server, bearer(token), 401)
    done = await kiseki("tokens", "create", "--user", "bob", *db)
    assert done.code == 1 and "disabled" in done.err
    await ok("users", "enable", "bob", *db)
    await _eventually(server, bearer(token), 200)


MISTAKES: list[tuple[tuple[str, ...], str | None, str]] = [
    (("users", "create", "bad name"), None, "is not a user name"),
    (("users", "create", "carol", "--password-stdin"), "short\n", "password must be at least 8"),
    (("users", "set-password", "nobody"), PASSWORD + "\n", "no user named 'nobody'"),
    (("users", "disable", "nobody"), None, "no user named 'nobody'"),
    (("tokens", "create", "--user", "nobody"), None, "no user named 'nobody'"),
    (("tokens", "create", "--user", "dave", "--scope", "admin"), None, "is not an admin"),
    (("tokens", "revoke", "12345"), None, "token 12345 not found"),
    (("tokens", "revoke", "x"), None, "is not a token id"),
    (("users", "create", "dave"), None, "already exists"),
]
"""(command, stdin, what its one line of error says)"""


async def test_mistakes_are_one_line_on_stderr(server: TestClient, database_url: str) -> None:
    db = ("--database-url", database_url)
    await ok("users", "create", "dave", *db)
    # Concurrently: each is a Python start-up of a second or two, and they touch nothing in common.
    runs = await asyncio.gather(*(kiseki(*args, *db, stdin=stdin) for args, stdin, _ in MISTAKES))
    for (args, _, message), done in zip(MISTAKES, runs, strict=True):
        assert done.code == 1, (args, done.code, done.out, done.err)
        assert done.out == "", args
        last = done.err.strip().splitlines()[-1]
        assert last.startswith("kiseki: ") and message in last, (args, done.err)
        assert "Traceback" not in done.err, args
    users = (await ok("users", "list", *db)).out
    assert "carol" not in users, "a refused password creates no user"


async def test_usage_mistakes_exit_2(database_url: str) -> None:
    usage = [
        ("tokens", "create", "--database-url", database_url),
        ("tokens", "create", "--user", "a", "--scope", "root"),
        ("tokens", "create", "--user", "a", "--expires-in", "-1"),
        ("users",),
    ]
    runs = await asyncio.gather(*(kiseki(*args) for args in usage))
    for args, done in zip(usage, runs, strict=True):
        assert done.code == 2, (args, done.err)
    assert "days" in runs[2].err


async def test_the_cli_uses_the_servers_auth_secret(aiohttp_client: Any, settings: Settings) -> None:
    secret = "a shared secret of the deployment"
    client = await aiohttp_client(create_app(auth_settings(settings, auth_secret=SecretStr(secret))))
    db = ("--database-url", settings.database_url or "")
    await ok("users", "create", "erin", *db)
    same = (await ok("tokens", "create", "--user", "erin", *db, env=_env(KISEKI_AUTH_SECRET=secret))).out
    assert (await _status(client, same.strip()))[0] == 200, "made under KISEKI_AUTH_SECRET: accepted"
    # Without the secret (or with another one) the CLI would store tokens this server cannot check:
    # it refuses, naming the setting, and stores nothing.
    for env in (_env(), _env(KISEKI_AUTH_SECRET="another secret")):
        done = await kiseki("tokens", "create", "--user", "erin", *db, env=env)
        assert done.code == 1 and "KISEKI_AUTH_SECRET" in done.err and not done.out, done.err
    listed = await ok("tokens", "list", "--user", "erin", *db, env=_env(KISEKI_AUTH_SECRET=secret))
    assert len(listed.out.strip().splitlines()) == 2, "the header and the one token"


async def test_tokens_generate_prints_a_fresh_token_and_stores_nothing(database_url: str) -> None:
    first, second = [
        done.out for done in await asyncio.gather(ok("tokens", "generate"), ok("tokens", "generate"))
    ]
    assert credentials.looks_like_token(first.strip()) and first.endswith("\n")
    assert first != second


def _get(url: str, token: str) -> int:
    request = urllib.request.Request(url, headers=bearer(token))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_cli_shares_the_embedded_postgres_with_a_running_server() -> None:
    """With no database URL the CLI opens the data folder's embedded Postgres. A `kiseki server` already
    running there keeps its database: the Postgres is shared, and stopped by the last process using it."""
    data_dir = Path(tempfile.mkdtemp(prefix="kiseki-cli-auth-", dir="/tmp"))
    env = _env(KISEKI_DATA_DIR=str(data_dir), KISEKI_DATABASE_URL="", KISEKI_AUTH="true")
    try:
        # Before any server: the CLI makes the database and the first user (bootstrap).
        first = asyncio.run(ok("users", "create", "ops", "--admin", env=env))
        assert "created admin user ops" in first.out
        with kiseki_server(env=env) as (url, lines):
            assert not any("created user 'admin'" in line for line in lines), "a user existed: no bootstrap"
            token = asyncio.run(
                ok("tokens", "create", "--user", "ops", "--scope", "admin", env=env)
            ).out.strip()
            assert _get(f"{url}/api/v1/users", token) == 200, "the running server accepts the CLI's token"
            listing = asyncio.run(ok("tokens", "list", env=env)).out.splitlines()
            assert _get(f"{url}/api/v1/whoami", token) == 200, "the server's Postgres outlived the CLI"
            asyncio.run(ok("tokens", "revoke", listing[1].split()[0], env=env))
            deadline = time.monotonic() + 1.0
            while _get(f"{url}/api/v1/whoami", token) != 401:
                assert time.monotonic() < deadline, "revoked through the CLI, still accepted after 1 s"
                time.sleep(0.05)
        # The server stopped the shared Postgres on its way out; the CLI starts it again by itself.
        again = asyncio.run(ok("users", "list", env=env)).out
        assert "ops" in again
        left = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if str(data_dir) in " ".join(p.info["cmdline"] or [])
        ]
        assert not left, f"the CLI leaves no Postgres of its own running: {left}"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
