"""Helpers for tests of access control: an auth-on app with an admin token, and users with tokens made
straight in the database (the admin API and CLI have tests of their own)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from kiseki_server.appkeys import POOL
from kiseki_server.auth import credentials
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import Level
from kiseki_server.config import Settings
from kiseki_server.stores.identities import IdentityStore
from kiseki_server.stores.permissions import PermissionStore

ADMIN_TOKEN = credentials.new_token()
"""Registered for user `admin` by every `auth_settings` app (the admin_token setting)."""


def auth_settings(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"auth": True, "admin_token": SecretStr(ADMIN_TOKEN), **changes})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True, slots=True)
class Person:
    name: str
    user_id: int
    token: str
    """A token of the scope asked for."""

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


async def make_user(
    client: TestClient,
    name: str,
    *,
    scope: str = "write",
    is_admin: bool = False,
    password: str | None = None,
    expires_at: int | None = None,
) -> Person:
    """A user with one token, made through the app's own stores (so its auth secret applies)."""
    app = client.server.app
    authorizer = app[AUTHORIZER]
    pool: asyncpg.Pool = app[POOL]
    identities = IdentityStore(pool)
    user = await identities.create_user(
        name, is_admin=is_admin, password_hash=credentials.hash_password(password) if password else None
    )
    token = credentials.new_token()
    await identities.create_token(
        int(user.user_id), authorizer.digest("token", token), name="test", scope=scope, expires_at=expires_at
    )
    return Person(name, int(user.user_id), token)


async def grant(client: TestClient, experiment_id: str | int, person: Person, level: Level) -> None:
    app = client.server.app
    pool: asyncpg.Pool = app[POOL]
    await PermissionStore(pool).set(int(experiment_id), person.user_id, level)
    app[AUTHORIZER].forget()
