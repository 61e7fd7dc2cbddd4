"""Authentication and permission checks, with the short-lived caches that keep them off the hot path.

A credential's lookup (and a user's level on an experiment) is cached for `auth_cache_seconds` (≤ 1 s):
a revoked token, a disabled user or a lowered permission is refused by every replica within that time,
while a busy client costs one HMAC and two dict lookups per request. Which experiment a run belongs to
never changes, so that mapping is cached for good (bounded).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from aiohttp import web

from kiseki_server.auth import credentials
from kiseki_server.auth.policy import ANONYMOUS, Level, Principal, Reader, Scope, reader_of
from kiseki_server.clock import now_ms
from kiseki_server.config import Settings
from kiseki_server.errors import Forbidden, NotFound, TooManyRequests, Unauthenticated
from kiseki_server.stores.identities import Credential, IdentityStore
from kiseki_server.stores.permissions import PermissionStore

PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
SESSION_COOKIE = "kiseki_session"
_RUN_CACHE_SIZE = 100_000
_CACHE_SIZE = 50_000
_TOUCH_EVERY_MS = 60_000
"""A token's last_used_at is written at most once a minute, not once per request."""
_PASSWORD_MEMORY_SECONDS = 600.0
_GOOD_MEMORY_SECONDS = 600.0


def principal_of(request: web.Request) -> Principal:
    """Who the request acts as (set by the auth middleware; anonymous admin with auth off)."""
    principal: Principal = request.get(PRINCIPAL_KEY, ANONYMOUS)
    return principal


@dataclass(slots=True)
class _Cached:
    principal: Principal | None
    problem: str | None
    until: float


class FailureLimiter:
    """At most `limit` failed logins or unknown credentials per client address per `window` seconds;
    beyond that the address gets 429s until its oldest failure ages out. Per process: with N replicas an
    address gets up to N * limit tries a window."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def check(self, client: str) -> None:
        failures = self._failures.get(client)
        if not failures:
            return
        now = time.monotonic()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) >= self.limit:
            wait = max(1, int(failures[0] + self.window - now) + 1)
            raise TooManyRequests(
                f"too many failed sign-ins from {client}; try again in {wait} s", retry_after=wait
            )

    def failed(self, client: str) -> None:
        if len(self._failures) > 100_000:
            self._failures.clear()  # bounded memory under a flood of addresses
        self._failures.setdefault(client, deque(maxlen=self.limit + 1)).append(time.monotonic())


class Authorizer:
    def __init__(self, settings: Settings, identities: IdentityStore, permissions: PermissionStore) -> None:
        self.enabled = settings.auth
        self.default_level = Level.parse(settings.default_permission)
        self._ttl = settings.auth_cache_seconds
        self._identities = identities
        self._permissions = permissions
        self._configured_secret = (
            settings.auth_secret.get_secret_value().encode() if settings.auth_secret else None
        )
        self._key = b""
        self._tokens: dict[bytes, _Cached] = {}
        self._levels: dict[tuple[int, int], tuple[Level, float]] = {}
        self._runs: OrderedDict[str, int] = OrderedDict()
        self._passwords: dict[bytes, tuple[str, float]] = {}
        """digest(user, password) → the password hash it verified against, so a Basic-auth client does
        not pay scrypt (~75 ms) on every cache refresh; a changed password has a new hash."""
        self._good: dict[bytes, float] = {}
        """Credentials that worked in the last `_GOOD_MEMORY_SECONDS`: exempt from the failure limit."""
        self.failures = FailureLimiter(settings.auth_failure_limit)

    async def start(self) -> None:
        self._key = await self._identities.auth_key(self._configured_secret)

    @property
    def key(self) -> bytes:
        return self._key

    def digest(self, kind: str, value: str) -> bytes:
        return credentials.digest(self._key, kind, value)

    # --- who is calling ---
    async def authenticate(self, request: web.Request) -> Principal | None:
        """The principal of the request's credential; None when it carries none. A credential that does
        not work is a 401 (and counts against the client address's failure budget)."""
        header = request.headers.get("Authorization")
        if header:
            scheme, _, value = header.partition(" ")
            value = value.strip()
            if scheme.lower() == "bearer" and value:
                return await self._check(request, "token", value)
            if scheme.lower() == "basic" and value:
                name, password = _basic(value)
                if credentials.looks_like_token(password):
                    return await self._check(request, "token", password)
                return await self._check(request, "password", f"{name}\x00{password}")
            raise Unauthenticated("the Authorization header must be 'Bearer <token>' or HTTP Basic")
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie:
            return await self._check(request, "session", cookie, quiet=True)
        return None

    async def _check(
        self, request: web.Request, kind: str, secret: str, *, quiet: bool = False
    ) -> Principal | None:
        client = request.remote or "unknown"
        key = self.digest(kind, secret)
        now = time.monotonic()
        cached = self._tokens.get(key)
        if cached is None or cached.until <= now:
            if self._good.get(key, 0.0) <= now:
                # An address over its failure budget gets no more lookups, except for credentials that
                # worked lately: one job with a stale token behind a NAT must not lock out the others.
                self.failures.check(client)
            principal, problem = await self._resolve(kind, key, secret)
            if len(self._tokens) > _CACHE_SIZE:
                self._tokens.clear()
                self._good.clear()
            cached = _Cached(principal, problem, now + self._ttl)
            self._tokens[key] = cached
            if principal is None:
                self.failures.failed(client)
            else:
                self._good[key] = now + _GOOD_MEMORY_SECONDS
        if cached.principal is None:
            if quiet:
                return None  # a stale session cookie: the caller is simply not signed in
            raise Unauthenticated(cached.problem or "the credential is not valid")
        return cached.principal

    async def _resolve(self, kind: str, key: bytes, secret: str) -> tuple[Principal | None, str | None]:
        if kind == "token":
            found = await self._identities.token_credential(key)
            problem = _problem(found, "token")
            if found is None or problem:
                return None, problem
            at = now_ms()
            if found.token_id is not None and (found.last_used_at or 0) < at - _TOUCH_EVERY_MS:
                await self._identities.touch_token(found.token_id, at)
            assert found.scope is not None
            scope = Scope.parse(found.scope)
            if scope is Scope.ADMIN and not found.is_admin:
                scope = Scope.WRITE  # an admin token of a user who is no longer an admin
            return Principal(found.user_id, found.name, found.is_admin, scope, "token", found.token_id), None
        if kind == "session":
            found = await self._identities.session_credential(key)
            problem = _problem(found, "session")
            if found is None or problem:
                return None, problem
            return (
                Principal(
                    found.user_id,
                    found.name,
                    found.is_admin,
                    _full_scope(found),
                    "session",
                    csrf_token=found.csrf_token,
                ),
                None,
            )
        name, _, password = secret.partition("\x00")
        found = await self._identities.password_credential(name)
        if found is None or found.password_hash is None or found.disabled:
            return None, "unknown user name or wrong password"
        if not await self.password_matches(key, password, found.password_hash):
            return None, "unknown user name or wrong password"
        return Principal(found.user_id, found.name, found.is_admin, _full_scope(found), "password"), None

    async def password_matches(self, key: bytes, password: str, stored: str) -> bool:
        remembered = self._passwords.get(key)
        if remembered is not None and remembered[0] == stored and remembered[1] > time.monotonic():
            return True
        ok = await asyncio.to_thread(credentials.verify_password, password, stored)
        if ok:
            if len(self._passwords) > _CACHE_SIZE:
                self._passwords.clear()
            self._passwords[key] = (stored, time.monotonic() + _PASSWORD_MEMORY_SECONDS)
        return ok

    async def login(self, request: web.Request, name: str, password: str) -> Principal:
        """A browser sign-in: the user's principal, or 401 (counted against the address's budget)."""
        client = request.remote or "unknown"
        self.failures.check(client)
        found = await self._identities.password_credential(name)
        ok = (
            found is not None
            and found.password_hash is not None
            and not found.disabled
            and await asyncio.to_thread(credentials.verify_password, password, found.password_hash)
        )
        if not ok or found is None:
            self.failures.failed(client)
            raise Unauthenticated("unknown user name or wrong password")
        return Principal(found.user_id, found.name, found.is_admin, _full_scope(found), "password")

    def forget(self) -> None:
        """Drop every cached lookup (tests; and after this process itself revoked something)."""
        self._tokens.clear()
        self._levels.clear()

    # --- what they may do ---
    def reader(self, request: web.Request) -> Reader | None:
        """The search scope for the request's principal (None: everything)."""
        return reader_of(principal_of(request), self.default_level)

    async def level(self, principal: Principal, experiment_id: int) -> Level:
        if principal.sees_everything or principal.user_id is None:
            return Level.MANAGE
        key = (principal.user_id, experiment_id)
        now = time.monotonic()
        cached = self._levels.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        explicit = await self._permissions.level(principal.user_id, experiment_id)
        level = self.default_level if explicit is None else explicit
        if len(self._levels) > _CACHE_SIZE:
            self._levels.clear()
        self._levels[key] = (level, now + self._ttl)
        return level

    async def require_experiment(self, request: web.Request, experiment_id: int, needed: Level) -> None:
        principal = principal_of(request)
        if principal.sees_everything:
            return
        have = await self.level(principal, experiment_id)
        if have < needed:
            raise Forbidden(
                f"user '{principal.name}' needs {needed.label.upper()} permission on experiment "
                f"{experiment_id} (has {have.label.upper()})",
                field="experiment_id",
            )

    async def experiment_of_run(self, run_id: str) -> int:
        experiment_id = self._runs.get(run_id)
        if experiment_id is not None:
            return experiment_id
        experiment_id = await self._permissions.experiment_of_run(run_id)
        if experiment_id is None:
            raise NotFound(f"run {run_id} not found", field="run_id")
        self._runs[run_id] = experiment_id
        if len(self._runs) > _RUN_CACHE_SIZE:
            self._runs.popitem(last=False)
        return experiment_id

    async def require_run(self, request: web.Request, run_id: str, needed: Level) -> int:
        """Check the caller's permission on the run's experiment; returns that experiment's id."""
        if principal_of(request).sees_everything:
            return -1
        experiment_id = await self.experiment_of_run(run_id)
        await self.require_experiment(request, experiment_id, needed)
        return experiment_id

    async def require_experiments(
        self, request: web.Request, experiment_ids: list[int], needed: Level
    ) -> None:
        for experiment_id in experiment_ids:
            await self.require_experiment(request, experiment_id, needed)

    async def grant_creator(self, request: web.Request, experiment_id: int) -> None:
        """Whoever creates an experiment manages it (whatever the default permission is)."""
        principal = principal_of(request)
        if not self.enabled or principal.user_id is None:
            return
        await self._permissions.set(experiment_id, principal.user_id, Level.MANAGE)
        self._levels.pop((principal.user_id, experiment_id), None)

    def require_scope(self, request: web.Request, needed: Scope, *, admin_only: bool = False) -> None:
        principal = principal_of(request)
        if admin_only and not principal.is_admin:
            raise Forbidden(f"user '{principal.name}' is not an admin")
        if principal.scope < needed:
            raise Forbidden(
                f"this {principal.via} has {principal.scope.label} scope; this needs {needed.label} scope"
            )


def _full_scope(found: Credential) -> Scope:
    return Scope.ADMIN if found.is_admin else Scope.WRITE


def _problem(found: Credential | None, what: str) -> str | None:
    if found is None:
        return f"unknown {what}" if what == "token" else "not signed in"
    if found.disabled:
        return f"user '{found.name}' is disabled"
    if found.revoked:
        return f"this {what} was revoked"
    if found.expires_at is not None and found.expires_at <= now_ms():
        return f"this {what} has expired"
    return None


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthenticated("the Basic credentials are not base64 of 'user:password'") from None
    name, sep, password = decoded.partition(":")
    if not sep:
        raise Unauthenticated("the Basic credentials are not base64 of 'user:password'")
    return name, password
