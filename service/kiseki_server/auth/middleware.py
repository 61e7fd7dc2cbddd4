"""The two middlewares of access control.

`guard` (always on, auth or not): the Host allowlist against DNS rebinding, the Origin check against
cross-site writes, and 415 for API bodies that are not JSON — together they stop a web page the user
visits from driving a kiseki on their machine with `text/plain` or form posts.

`authenticate` (auth on): the request's principal from its credential, then the access its route
requires (the route table's `Access`): 401 without a working credential, 403 when the credential's
scope or the user's permission on the experiment the path names falls short. Browser sessions must also
send their CSRF token with every unsafe request. Routes with no entry in the table are refused
(fail closed): `tests/test_auth_routes.py` proves every route has one.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from aiohttp import web
from aiohttp.web_urldispatcher import SystemRoute

from kiseki_server.auth.authorizer import PRINCIPAL_KEY, Authorizer
from kiseki_server.auth.policy import ANONYMOUS, Access, Principal, Scope
from kiseki_server.config import Settings
from kiseki_server.errors import (
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthenticated,
    UnsupportedMediaType,
)
from kiseki_server.stores.experiments import parse_experiment_id
from kiseki_server.stores.runs import parse_run_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
AUTHORIZER: web.AppKey[Authorizer] = web.AppKey("authorizer")
ROUTE_ACCESS: web.AppKey[dict[web.AbstractRoute, Access | None]] = web.AppKey("route_access")
"""Every registered route → what it requires; None for the open ones (/healthz, the login page, static
files, signed data URLs whose signature is the credential)."""
STREAMED_BODIES: web.AppKey[frozenset[Handler]] = web.AppKey("streamed_bodies")

_UNREGISTERED = Access(Scope.ADMIN, admin_only=True)
"""Fail closed: a route someone forgot to put in the table is for admins only."""
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_API_PREFIXES = ("/api/", "/ajax-api/")
_ALWAYS_OPEN = frozenset({"/healthz", "/readyz"})
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def protect(app: web.Application, route: web.AbstractRoute, access: Access | None) -> None:
    """Record what `route` requires (call for every route added to the app). A GET's implicit HEAD
    twin gets the same."""
    table = app[ROUTE_ACCESS]
    table[route] = access
    if route.method == "GET" and route.resource is not None:
        for sibling in route.resource:
            if sibling.method == "HEAD" and sibling.handler is route.handler:
                table[sibling] = access


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names served (lower case, no port); None for any."""
    if settings.allowed_hosts:
        names = {h.strip().lower().strip("[]") for h in settings.allowed_hosts.split(",") if h.strip()}
        return None if "*" in names else frozenset(names)
    if not is_loopback(settings.host):
        return None  # reachable by whatever names the network gives it; auth is on (or explicitly off)
    names = set(_LOOPBACK_NAMES) | {settings.host.lower().strip("[]")}
    if settings.public_url:
        public = urlsplit(settings.public_url).hostname
        if public:
            names.add(public.lower())
    return frozenset(names)


def _host_name(value: str) -> str:
    """`host[:port]` or `[v6]:port` → the bare lower-case host."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def guard(settings: Settings) -> web.middleware:  # type: ignore[valid-type]
    hosts = allowed_hosts(settings)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in _ALWAYS_OPEN:
            host = _host_name(request.headers.get("Host", ""))
            if hosts is not None and host not in hosts:
                raise Forbidden(
                    f"this server does not answer to the host name '{host}' (DNS rebinding guard); "
                    "add it to KISEKI_ALLOWED_HOSTS if it is yours"
                )
            if request.method in UNSAFE:
                _check_origin(request, hosts, host)
                if request.path.startswith(_API_PREFIXES) and request.body_exists:
                    _check_json(request)
        return await handler(request)

    return middleware


def _check_origin(request: web.Request, hosts: frozenset[str] | None, host: str) -> None:
    """A browser names the page that sent a write in Origin: it must be this service itself."""
    origin = request.headers.get("Origin")
    if origin is not None:
        origin_host = (urlsplit(origin).hostname or "").lower() if origin != "null" else ""
        same = origin_host == host if hosts is None else origin_host in hosts
        if not same:
            raise Forbidden(f"cross-site request from origin {origin!r} refused")
    elif request.headers.get("Sec-Fetch-Site") == "cross-site":
        raise Forbidden("cross-site request refused")


def _check_json(request: web.Request) -> None:
    handler = request.match_info.handler
    if handler in request.app.get(STREAMED_BODIES, frozenset()):
        return
    media = request.content_type
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"request bodies must be JSON (Content-Type: application/json), got "
            f"{request.headers.get('Content-Type', 'none')!r}"
        )


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    authorizer = request.app[AUTHORIZER]
    if not authorizer.enabled:
        request[PRINCIPAL_KEY] = ANONYMOUS
        return await handler(request)
    route = request.match_info.route
    if isinstance(route, SystemRoute) or request.path in _ALWAYS_OPEN:
        return await handler(request)  # 404 / 405 answers, health probes
    table = request.app[ROUTE_ACCESS]
    access = table.get(route, _UNREGISTERED)
    if access is None:
        # Open (sign-in page, static files, signed data URLs): who is calling only shapes the page.
        try:
            principal = await authorizer.authenticate(request)
        except (Unauthenticated, TooManyRequests):
            principal = None
        if principal is not None:
            request[PRINCIPAL_KEY] = principal
        return await handler(request)
    principal = await authorizer.authenticate(request)
    if principal is None:
        if (
            request.method == "GET"
            and not request.path.startswith(_API_PREFIXES)
            and request.path != "/metrics"
        ):
            raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")
        raise Unauthenticated(
            "this server requires authentication: send 'Authorization: Bearer <token>' "
            "(KISEKI_TRACKING_TOKEN for the SDK, MLFLOW_TRACKING_TOKEN for mlflow) or sign in"
        )
    request[PRINCIPAL_KEY] = principal
    if principal.via == "session" and request.method in UNSAFE:
        await _check_csrf(request, principal)
    authorizer.require_scope(request, access.scope, admin_only=access.admin_only)
    if access.level is not None and access.target == "path":
        info = request.match_info
        if "run_id" in info:
            await authorizer.require_run(request, parse_run_id(info["run_id"]), access.level)
        elif "experiment_id" in info:
            await authorizer.require_experiment(
                request, parse_experiment_id(info["experiment_id"]), access.level
            )
        else:  # a route table mistake: "path" access on a path that names no experiment
            raise NotFound("no such resource")
    return await handler(request)


async def _check_csrf(request: web.Request, principal: Principal) -> None:
    """A session-authenticated write must carry the session's CSRF token: form field or header."""
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    if not sent or not principal.csrf_token or not hmac.compare_digest(sent, principal.csrf_token):
        raise Forbidden("the form's CSRF token is missing or stale; reload the page and try again")
