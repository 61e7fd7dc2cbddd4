"""/api/v1/whoami, /users, /tokens, /experiments/{id}/permissions and /audit: access control's API.

Users and the audit log are for admins. Tokens are everyone's own business: any caller with a write
credential lists, creates and revokes their own (never with more scope than the credential they call
with); an admin acting with an admin-scoped credential may do it for anyone. A token's secret is shown
once, in the answer that creates it. Permissions belong to whoever MANAGEs the experiment.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from kiseki.models import INT64_MAX
from kiseki_server.appkeys import STORES
from kiseki_server.auth import credentials
from kiseki_server.auth.audit import audit
from kiseki_server.auth.authorizer import principal_of
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.models import (
    NAME_PATTERN,
    AuditList,
    Permission,
    PermissionList,
    PermissionSet,
    Token,
    TokenCreate,
    TokenCreated,
    TokenList,
    User,
    UserCreate,
    UserList,
    UserUpdate,
    WhoAmI,
)
from kiseki_server.auth.policy import ADMIN, MANAGE_PATH, READ, WRITE, Level, Principal, Scope
from kiseki_server.clock import now_ms
from kiseki_server.errors import Conflict, Forbidden, NotFound, Unprocessable
from kiseki_server.http_io import model_response, query_int, query_str, read_model
from kiseki_server.routing import Query, Route, paging
from kiseki_server.stores.experiments import parse_experiment_id

AUDIT_MAX_PAGE = 1000
_NAME = re.compile(NAME_PATTERN)


def acts_as_admin(principal: Principal) -> bool:
    """An admin calling with an admin-scoped credential: an admin's write token acts as a plain user."""
    return principal.is_admin and principal.scope >= Scope.ADMIN


def _user_name(request: web.Request) -> str:
    """The {user_name} of the path; a name no user can have is simply not found."""
    name = request.match_info["user_name"]
    if not _NAME.fullmatch(name):
        raise NotFound(f"no user named {name!r}", field="user_name")
    return name


def _token_id(request: web.Request) -> int:
    raw = request.match_info["token_id"]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise NotFound(f"token {raw!r} not found", field="token_id")
    return int(raw)


async def _hash(password: str, field: str = "password") -> str:
    problem = credentials.check_password_rules(password)
    if problem:
        raise Unprocessable(f"{field}: {problem}", field=field)
    return await asyncio.to_thread(credentials.hash_password, password)  # scrypt: ~75 ms of CPU


# --- who am I -----------------------------------------------------------------------------------------


async def whoami(request: web.Request) -> web.Response:
    principal = principal_of(request)
    return model_response(
        WhoAmI(
            user=principal.name,
            is_admin=principal.is_admin,
            scope=principal.scope.label,  # type: ignore[arg-type]
            via=principal.via,
            auth_enabled=request.app[AUTHORIZER].enabled,
        )
    )


# --- users (admins) -----------------------------------------------------------------------------------


async def list_users(request: web.Request) -> web.Response:
    return model_response(await request.app[STORES].identities.list_users())


async def create_user(request: web.Request) -> web.Response:
    body = await read_model(request, UserCreate)
    password_hash = await _hash(body.password) if body.password is not None else None
    user = await request.app[STORES].identities.create_user(
        body.name, kind=body.kind, is_admin=body.is_admin, password_hash=password_hash
    )
    await audit(
        request,
        "user.create",
        "user",
        user.name,
        kind=user.kind,
        is_admin=user.is_admin,
        has_password=user.has_password,
    )
    return model_response(user, status=201)


async def get_user(request: web.Request) -> web.Response:
    return model_response(await request.app[STORES].identities.get_user(_user_name(request)))


async def update_user(request: web.Request) -> web.Response:
    name = _user_name(request)
    body = await read_model(request, UserUpdate)
    principal = principal_of(request)
    if principal.name == name and principal.user_id is not None:
        if body.disabled:
            raise Conflict(
                "you cannot disable yourself; another admin (or `kiseki users`) can", field="disabled"
            )
        if body.is_admin is False:
            raise Conflict(
                "you cannot drop your own admin rights; another admin (or `kiseki users`) can",
                field="is_admin",
            )
    identities = request.app[STORES].identities
    password_hash = await _hash(body.password) if body.password is not None else None
    user = await identities.update_user(
        name, is_admin=body.is_admin, disabled=body.disabled, password_hash=password_hash
    )
    signed_out = 0
    if body.disabled or password_hash is not None:
        # A disabled user, or one whose password was reset (perhaps because it leaked), is signed out of
        # every browser; a disabled user's tokens stop working through the credential lookup itself.
        signed_out = await identities.revoke_sessions_of(int(user.user_id))
    request.app[AUTHORIZER].forget()
    changed: dict[str, object] = {
        k: v for k, v in (("is_admin", body.is_admin), ("disabled", body.disabled)) if v is not None
    }
    if password_hash is not None:
        changed["password"] = "changed"
    await audit(request, "user.update", "user", user.name, sessions_revoked=signed_out, **changed)
    return model_response(user)


# --- tokens (everyone's own; admins anyone's) ---------------------------------------------------------


async def _owner(request: web.Request, name: str | None) -> User | None:
    """The user whose tokens the request is about: `name` (admins only, unless it is the caller), else
    the caller; None for the anonymous caller of a server with auth off (no user of its own)."""
    principal = principal_of(request)
    identities = request.app[STORES].identities
    if name is not None and (principal.user_id is None or name != principal.name):
        if not acts_as_admin(principal):
            raise Forbidden(
                "only an admin (with an admin-scoped credential) may manage another user's tokens",
                field="user",
            )
        return await identities.get_user(name)
    if principal.user_id is None:
        return None
    return await identities.get_user(principal.name)


async def list_tokens(request: web.Request) -> web.Response:
    owner = await _owner(request, query_str(request, "user"))
    # The anonymous admin of an auth-off server has no tokens of its own: it sees everyone's.
    user_id = None if owner is None else int(owner.user_id)
    return model_response(await request.app[STORES].identities.list_tokens(user_id))


async def create_token(request: web.Request) -> web.Response:
    body = await read_model(request, TokenCreate)
    principal = principal_of(request)
    owner = await _owner(request, body.user)
    if owner is None:
        raise Forbidden(
            "with authentication off no user is signed in to own the token: name one in 'user'", field="user"
        )
    if owner.disabled_at is not None:
        raise Conflict(f"user '{owner.name}' is disabled; enable them first", field="user")
    scope = Scope.parse(body.scope)
    if scope > principal.scope:
        raise Forbidden(
            f"this {principal.via} has {principal.scope.label} scope: it cannot make a {scope.label} token",
            field="scope",
        )
    if scope is Scope.ADMIN and not owner.is_admin:
        raise Forbidden(f"user '{owner.name}' is not an admin: no admin-scoped token", field="scope")
    expires_at = None
    if body.expires_in_seconds is not None:
        expires_at = min(now_ms() + body.expires_in_seconds * 1000, INT64_MAX)
    secret = credentials.new_token()
    info = await request.app[STORES].identities.create_token(
        int(owner.user_id),
        request.app[AUTHORIZER].digest("token", secret),
        name=body.name,
        scope=scope.label,
        expires_at=expires_at,
    )
    await audit(
        request, "token.create", "token", info.token_id, user=owner.name, scope=info.scope, name=info.name
    )
    return model_response(TokenCreated(token=secret, info=info), status=201)


async def revoke_token(request: web.Request) -> web.Response:
    token_id = _token_id(request)
    principal = principal_of(request)
    identities = request.app[STORES].identities
    _, owner_id = await identities.get_token(token_id)
    if owner_id != principal.user_id and not acts_as_admin(principal):
        raise NotFound(f"token {token_id} not found", field="token_id")  # others' tokens are not shown
    token = await identities.revoke_token(token_id)
    # Refused at once here; other replicas drop their cached lookup within auth_cache_seconds.
    request.app[AUTHORIZER].forget()
    await audit(request, "token.revoke", "token", token_id, user=token.user, name=token.name)
    return model_response(token)


# --- experiment permissions (MANAGE on the experiment) ------------------------------------------------


def _experiment_id(request: web.Request) -> int:
    return parse_experiment_id(request.match_info["experiment_id"])


async def list_permissions(request: web.Request) -> web.Response:
    experiment_id = _experiment_id(request)
    stores = request.app[STORES]
    await stores.experiments.get(experiment_id)  # 404 for an unknown experiment
    return model_response(await stores.permissions.list(experiment_id, request.app[AUTHORIZER].default_level))


async def set_permission(request: web.Request) -> web.Response:
    experiment_id = _experiment_id(request)
    name = _user_name(request)
    body = await read_model(request, PermissionSet)
    stores = request.app[STORES]
    await stores.experiments.get(experiment_id)
    user_id = await stores.identities.user_id(name)
    await stores.permissions.set(experiment_id, user_id, Level.parse(body.level))
    request.app[AUTHORIZER].forget()
    await audit(request, "permission.set", "experiment", experiment_id, user=name, level=body.level)
    return model_response(Permission(experiment_id=str(experiment_id), user=name, level=body.level))


async def delete_permission(request: web.Request) -> web.Response:
    """Idempotent: the user falls back to the server's default permission on the experiment."""
    experiment_id = _experiment_id(request)
    name = _user_name(request)
    stores = request.app[STORES]
    await stores.experiments.get(experiment_id)
    user_id = await stores.identities.user_id(name)
    authorizer = request.app[AUTHORIZER]
    if await stores.permissions.delete(experiment_id, user_id):
        authorizer.forget()
        await audit(request, "permission.delete", "experiment", experiment_id, user=name)
    return model_response(await stores.permissions.list(experiment_id, authorizer.default_level))


# --- audit log (admins) -------------------------------------------------------------------------------


async def list_audit(request: web.Request) -> web.Response:
    result = await request.app[STORES].audit.list(
        action=query_str(request, "action"),
        max_results=query_int(request, "max_results", default=100, lo=1, hi=AUDIT_MAX_PAGE),
        page_token=query_str(request, "page_token"),
    )
    return model_response(result)


_USER = "/api/v1/users/{user_name}"
_PERMISSIONS = "/api/v1/experiments/{experiment_id}/permissions"
ROUTES = [
    Route(
        "GET",
        "/api/v1/whoami",
        whoami,
        "Who the credential of this request belongs to, and what it may do",
        response=WhoAmI,
        access=READ,
    ),
    Route(
        "GET", "/api/v1/users", list_users, "List users and service accounts", response=UserList, access=ADMIN
    ),
    Route(
        "POST",
        "/api/v1/users",
        create_user,
        "Create a user or service account",
        UserCreate,
        User,
        201,
        access=ADMIN,
    ),
    Route("GET", _USER, get_user, "Get a user", response=User, access=ADMIN),
    Route(
        "PATCH",
        _USER,
        update_user,
        "Change a user's admin flag or password, disable or enable them (disabling signs them out)",
        UserUpdate,
        User,
        access=ADMIN,
    ),
    Route(
        "GET",
        "/api/v1/tokens",
        list_tokens,
        "List your API tokens (admins: anyone's, with `user`); secrets are never shown again",
        response=TokenList,
        query=(Query("user", "string", "Admins only: list this user's tokens."),),
        access=READ,
    ),
    Route(
        "POST",
        "/api/v1/tokens",
        create_token,
        "Create an API token (its scope at most the calling credential's); the answer holds the secret, once",
        TokenCreate,
        TokenCreated,
        201,
        access=WRITE,
    ),
    Route(
        "DELETE",
        "/api/v1/tokens/{token_id}",
        revoke_token,
        "Revoke one of your tokens (admins: anyone's); refused everywhere within auth_cache_seconds",
        response=Token,
        access=WRITE,
    ),
    Route(
        "GET",
        _PERMISSIONS,
        list_permissions,
        "The experiment's per-user permissions and the default for everyone else",
        response=PermissionList,
        access=MANAGE_PATH,
    ),
    Route(
        "PUT",
        _PERMISSIONS + "/{user_name}",
        set_permission,
        "Set a user's permission on the experiment (none hides it from them)",
        PermissionSet,
        Permission,
        access=MANAGE_PATH,
    ),
    Route(
        "DELETE",
        _PERMISSIONS + "/{user_name}",
        delete_permission,
        "Drop a user's own permission on the experiment: the default applies again",
        response=PermissionList,
        access=MANAGE_PATH,
    ),
    Route(
        "GET",
        "/api/v1/audit",
        list_audit,
        "The audit log, newest first: who created, deleted, purged or re-permissioned what",
        response=AuditList,
        query=(
            Query("action", "string", "Only this action, e.g. experiment.delete or token.revoke."),
            *paging(AUDIT_MAX_PAGE, default=100),
        ),
        access=ADMIN,
    ),
]
