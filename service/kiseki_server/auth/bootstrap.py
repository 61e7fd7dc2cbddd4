"""The first identities of a server with auth on: the admin token given by a secret (containers), or —
on a database with no users yet — an `admin` user whose token is printed once (a fresh `--auth` server).
Both are idempotent across replicas and restarts."""

from __future__ import annotations

import logging

from kiseki_server.auth import credentials
from kiseki_server.auth.authorizer import Authorizer
from kiseki_server.config import Settings
from kiseki_server.stores.identities import IdentityStore

log = logging.getLogger(__name__)

ADMIN_USER = "admin"


async def bootstrap(settings: Settings, identities: IdentityStore, authorizer: Authorizer) -> str | None:
    """Register KISEKI_ADMIN_TOKEN, or make the first admin; returns a token to show the operator once."""
    if not settings.auth:
        return None
    if settings.admin_token is not None:
        token = settings.admin_token.get_secret_value()
        if not credentials.looks_like_token(token):
            raise ValueError(
                "KISEKI_ADMIN_TOKEN is not a kiseki token (ksk_… of 47 characters); make one with "
                "`kiseki tokens generate`"
            )
        user, _ = await identities.ensure_user(ADMIN_USER, is_admin=True)
        added = await identities.ensure_token(
            int(user.user_id), authorizer.digest("token", token), name="KISEKI_ADMIN_TOKEN", scope="admin"
        )
        if added:
            log.info("registered KISEKI_ADMIN_TOKEN for user %s", ADMIN_USER)
        return None
    if await identities.count_users():
        return None
    user, created = await identities.ensure_user(ADMIN_USER, is_admin=True)
    if not created:
        return None  # another replica made it a moment ago (and showed its token)
    token = credentials.new_token()
    await identities.create_token(
        int(user.user_id),
        authorizer.digest("token", token),
        name="first admin",
        scope="admin",
        expires_at=None,
    )
    return token
