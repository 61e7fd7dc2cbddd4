"""Users and service accounts, their API tokens and browser sessions, and the database's auth secret.

Secrets arrive here already digested (auth.credentials): this module never sees a token or a password.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

from kiseki_server.auth import credentials
from kiseki_server.auth.models import Token, TokenList, User, UserList
from kiseki_server.clock import now_ms
from kiseki_server.errors import Conflict, InvalidInput, NotFound

_USER_COLUMNS = (
    "u.user_id, u.name, u.kind, u.is_admin, u.password_hash IS NOT NULL AS has_password, "
    "u.created_at, u.disabled_at"
)
_TOKEN_COLUMNS = (
    "t.token_id, u.name AS user_name, t.name, t.scope, t.created_at, t.expires_at, "
    "t.last_used_at, t.revoked_at"
)


@dataclass(frozen=True, slots=True)
class Credential:
    """What a token, session or password resolves to, as the authorizer needs it."""

    user_id: int
    name: str
    is_admin: bool
    disabled: bool
    scope: str | None
    """The token's scope; None for sessions and passwords (the user's full rights)."""
    token_id: int | None = None
    expires_at: int | None = None
    revoked: bool = False
    csrf_token: str | None = None
    password_hash: str | None = None
    last_used_at: int | None = None


def _user(row: asyncpg.Record) -> User:
    return User(
        user_id=str(row["user_id"]),
        name=row["name"],
        kind=row["kind"],
        is_admin=row["is_admin"],
        has_password=row["has_password"],
        created_at=row["created_at"],
        disabled_at=row["disabled_at"],
    )


def _token(row: asyncpg.Record) -> Token:
    return Token(
        token_id=str(row["token_id"]),
        user=row["user_name"],
        name=row["name"],
        scope=row["scope"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


class IdentityStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # --- the auth secret of servers started without KISEKI_AUTH_SECRET ---
    async def auth_key(self, configured: bytes | None) -> bytes:
        """The HMAC key tokens and sessions are stored under: the configured secret, or the database's
        random one (made by the first process that asks, so every replica agrees without configuration).

        The database remembers a fingerprint of the first configured secret; a process with another
        secret, or with none once one was configured, gets SecretMismatch instead of a key under which
        every stored token would fail.
        """
        await self._pool.execute(
            "INSERT INTO auth_secret (secret) VALUES ($1) ON CONFLICT DO NOTHING", secrets.token_bytes(32)
        )
        if configured is None:
            row = await self._pool.fetchrow("SELECT secret, fingerprint FROM auth_secret")
            if row["fingerprint"] is not None:
                raise credentials.SecretMismatch(
                    "this database's tokens are stored under a KISEKI_AUTH_SECRET, and none is set here: "
                    "set the same one as the servers'"
                )
            key: bytes = row["secret"]
            return key
        mine = credentials.secret_fingerprint(configured)
        stored = await self._pool.fetchval(
            "UPDATE auth_secret SET fingerprint = coalesce(fingerprint, $1) RETURNING fingerprint", mine
        )
        if stored != mine:
            raise credentials.SecretMismatch(
                "KISEKI_AUTH_SECRET is not the secret this database's tokens are stored under: use the same "
                "one on every replica and for `kiseki users`/`kiseki tokens`; to change it on purpose (every "
                "token and session stops working), run `kiseki tokens reset-secret` first"
            )
        return configured

    async def reset_secret(self) -> tuple[int, int]:
        """Forget the configured secret's fingerprint and revoke every token and session (they were
        stored under the old key); returns how many of each were revoked."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE auth_secret SET fingerprint = NULL")
            tokens = await conn.execute(
                "UPDATE api_tokens SET revoked_at = $1 WHERE revoked_at IS NULL", now_ms()
            )
            sessions = await conn.execute(
                "UPDATE sessions SET revoked_at = $1 WHERE revoked_at IS NULL", now_ms()
            )
        return int(tokens.split()[-1]), int(sessions.split()[-1])

    # --- users ---
    async def create_user(
        self, name: str, *, kind: str = "user", is_admin: bool = False, password_hash: str | None = None
    ) -> User:
        try:
            row = await self._pool.fetchrow(
                f"""
                INSERT INTO users AS u (name, kind, is_admin, password_hash, created_at)
                VALUES ($1, $2, $3, $4, $5) RETURNING {_USER_COLUMNS}
                """,
                name,
                kind,
                is_admin,
                password_hash,
                now_ms(),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a user named '{name}' already exists", field="name") from None
        return _user(row)

    async def ensure_user(self, name: str, *, is_admin: bool) -> tuple[User, bool]:
        """The user named `name`, created if missing (True when this call created it)."""
        row = await self._pool.fetchrow(
            f"""
            INSERT INTO users AS u (name, kind, is_admin, created_at) VALUES ($1, 'user', $2, $3)
            ON CONFLICT (name) DO NOTHING RETURNING {_USER_COLUMNS}
            """,
            name,
            is_admin,
            now_ms(),
        )
        if row is not None:
            return _user(row), True
        return await self.get_user(name), False

    async def count_users(self) -> int:
        count: int = await self._pool.fetchval("SELECT count(*) FROM users")
        return count

    async def get_user(self, name: str) -> User:
        row = await self._pool.fetchrow(f"SELECT {_USER_COLUMNS} FROM users u WHERE u.name = $1", name)
        if row is None:
            raise NotFound(f"no user named '{name}'", field="user")
        return _user(row)

    async def user_id(self, name: str) -> int:
        return int((await self.get_user(name)).user_id)

    async def list_users(self) -> UserList:
        rows = await self._pool.fetch(f"SELECT {_USER_COLUMNS} FROM users u ORDER BY u.name")
        return UserList(users=[_user(r) for r in rows])

    async def update_user(
        self,
        name: str,
        *,
        is_admin: bool | None = None,
        disabled: bool | None = None,
        password_hash: str | None = None,
    ) -> User:
        row = await self._pool.fetchrow(
            f"""
            UPDATE users u SET
                is_admin = coalesce($2, u.is_admin),
                disabled_at = CASE WHEN $3::boolean IS NULL THEN u.disabled_at
                                   WHEN $3 THEN coalesce(u.disabled_at, $5) ELSE NULL END,
                password_hash = coalesce($4, u.password_hash)
            WHERE u.name = $1 RETURNING {_USER_COLUMNS}
            """,
            name,
            is_admin,
            disabled,
            password_hash,
            now_ms(),
        )
        if row is None:
            raise NotFound(f"no user named '{name}'", field="user")
        return _user(row)

    async def password_credential(self, name: str) -> Credential | None:
        row = await self._pool.fetchrow(
            "SELECT user_id, name, is_admin, disabled_at, password_hash FROM users WHERE name = $1", name
        )
        if row is None:
            return None
        return Credential(
            user_id=row["user_id"],
            name=row["name"],
            is_admin=row["is_admin"],
            disabled=row["disabled_at"] is not None,
            scope=None,
            password_hash=row["password_hash"],
        )

    # --- tokens ---
    async def create_token(
        self, user_id: int, digest: bytes, *, name: str, scope: str, expires_at: int | None
    ) -> Token:
        row = await self._pool.fetchrow(
            f"""
            WITH t AS (
                INSERT INTO api_tokens (user_id, digest, name, scope, created_at, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING *
            )
            SELECT {_TOKEN_COLUMNS} FROM t JOIN users u USING (user_id)
            """,
            user_id,
            digest,
            name,
            scope,
            now_ms(),
            expires_at,
        )
        return _token(row)

    async def ensure_token(self, user_id: int, digest: bytes, *, name: str, scope: str) -> bool:
        """Register a token given from outside (KISEKI_ADMIN_TOKEN) once; True when this call added it."""
        status: str = await self._pool.execute(
            """
            INSERT INTO api_tokens (user_id, digest, name, scope, created_at) VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (digest) DO NOTHING
            """,
            user_id,
            digest,
            name,
            scope,
            now_ms(),
        )
        return status.endswith(" 1")

    async def list_tokens(self, user_id: int | None = None) -> TokenList:
        rows = await self._pool.fetch(
            f"""
            SELECT {_TOKEN_COLUMNS} FROM api_tokens t JOIN users u USING (user_id)
            WHERE $1::bigint IS NULL OR t.user_id = $1 ORDER BY t.token_id
            """,
            user_id,
        )
        return TokenList(tokens=[_token(r) for r in rows])

    async def get_token(self, token_id: int) -> tuple[Token, int]:
        """The token and its owner's user id."""
        row = await self._pool.fetchrow(
            f"SELECT {_TOKEN_COLUMNS}, t.user_id FROM api_tokens t JOIN users u USING (user_id)"
            " WHERE t.token_id = $1",
            token_id,
        )
        if row is None:
            raise NotFound(f"token {token_id} not found", field="token_id")
        return _token(row), row["user_id"]

    async def revoke_token(self, token_id: int) -> Token:
        row = await self._pool.fetchrow(
            f"""
            WITH t AS (
                UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE token_id = $1 RETURNING *
            )
            SELECT {_TOKEN_COLUMNS} FROM t JOIN users u USING (user_id)
            """,
            token_id,
            now_ms(),
        )
        if row is None:
            raise NotFound(f"token {token_id} not found", field="token_id")
        return _token(row)

    async def token_credential(self, digest: bytes) -> Credential | None:
        row = await self._pool.fetchrow(
            """
            SELECT t.token_id, t.scope, t.expires_at, t.revoked_at, t.last_used_at,
                   u.user_id, u.name, u.is_admin, u.disabled_at
            FROM api_tokens t JOIN users u USING (user_id) WHERE t.digest = $1
            """,
            digest,
        )
        if row is None:
            return None
        return Credential(
            user_id=row["user_id"],
            name=row["name"],
            is_admin=row["is_admin"],
            disabled=row["disabled_at"] is not None,
            scope=row["scope"],
            token_id=row["token_id"],
            expires_at=row["expires_at"],
            revoked=row["revoked_at"] is not None,
            last_used_at=row["last_used_at"],
        )

    async def touch_token(self, token_id: int, at: int) -> None:
        await self._pool.execute("UPDATE api_tokens SET last_used_at = $2 WHERE token_id = $1", token_id, at)

    # --- browser sessions ---
    async def create_session(self, user_id: int, digest: bytes, csrf_token: str, *, expires_at: int) -> None:
        await self._pool.execute(
            "INSERT INTO sessions (digest, user_id, csrf_token, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            digest,
            user_id,
            csrf_token,
            now_ms(),
            expires_at,
        )

    async def session_credential(self, digest: bytes) -> Credential | None:
        row = await self._pool.fetchrow(
            """
            SELECT s.csrf_token, s.expires_at, s.revoked_at, u.user_id, u.name, u.is_admin, u.disabled_at
            FROM sessions s JOIN users u USING (user_id) WHERE s.digest = $1
            """,
            digest,
        )
        if row is None:
            return None
        return Credential(
            user_id=row["user_id"],
            name=row["name"],
            is_admin=row["is_admin"],
            disabled=row["disabled_at"] is not None,
            scope=None,
            expires_at=row["expires_at"],
            revoked=row["revoked_at"] is not None,
            csrf_token=row["csrf_token"],
        )

    async def revoke_session(self, digest: bytes) -> None:
        await self._pool.execute(
            "UPDATE sessions SET revoked_at = coalesce(revoked_at, $2) WHERE digest = $1", digest, now_ms()
        )

    async def revoke_sessions_of(self, user_id: int) -> int:
        status = await self._pool.execute(
            "UPDATE sessions SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            user_id,
            now_ms(),
        )
        return int(status.split()[-1])

    async def drop_expired_sessions(self) -> None:
        await self._pool.execute("DELETE FROM sessions WHERE expires_at < $1", now_ms())


def check_scope_name(scope: str) -> None:
    if scope not in ("read", "write", "admin"):
        raise InvalidInput(f"scope must be read, write or admin; got {scope!r}", field="scope")
