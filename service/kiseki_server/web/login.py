"""Signing in to the run browser: the sign-in page, server-side sessions and signing out.

A session is a random id in the `kiseki_session` cookie (HttpOnly, SameSite=Lax); the database holds
only its HMAC digest, its expiry and the CSRF token every unsafe request of the session must send back
(the auth middleware checks it). Signing out revokes the row, so a copied cookie stops working too.

The sign-in form is protected against login CSRF (a hostile page signing the browser in as the
attacker) twice: the guard middleware refuses a POST whose Origin is another site, and, because a
browser may leave Origin out, the form must echo the random `kiseki_login_csrf` cookie in a hidden
field (double submit) — a cross-site page can neither read that cookie nor, with SameSite=Strict, make
the browser send it.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Mapping

from aiohttp import web

from kiseki_server.appkeys import SETTINGS, STORES
from kiseki_server.auth import credentials
from kiseki_server.auth.audit import audit
from kiseki_server.auth.authorizer import PRINCIPAL_KEY, SESSION_COOKIE, principal_of
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import Access, Scope
from kiseki_server.clock import now_ms
from kiseki_server.errors import TooManyRequests, Unauthenticated
from kiseki_server.web.render import render

LOGOUT = Access(Scope.READ)
"""Any signed-in browser may sign out (the middleware also wants the session's CSRF token)."""
LOGIN_CSRF_COOKIE = "kiseki_login_csrf"
_LOGIN_CSRF = re.compile(r"[A-Za-z0-9_-]{32,64}")
MAX_NAME_LENGTH = 200
_NO_STORE = {"Cache-Control": "no-store"}


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never `//host` or `/\\host`, which
    browsers read as another site), else the experiment list."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target)
    ):
        return "/"
    return target


def _secure_cookies(request: web.Request) -> bool:
    public_url = request.app[SETTINGS].public_url or ""
    return request.secure or public_url.startswith("https://")


def _login_page(
    request: web.Request, *, next_url: str, name: str = "", message: str | None = None, status: int = 200
) -> web.Response:
    """The form, with this browser's double-submit value (kept when the browser has a valid one, so two
    open sign-in tabs both work)."""
    token = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not _LOGIN_CSRF.fullmatch(token):
        token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        {"next_url": next_url, "name": name, "message": message, "login_csrf": token},
        status=status,
    )
    response.headers.update(_NO_STORE)
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        path="/login",
        httponly=True,
        samesite="Strict",
        secure=_secure_cookies(request),
    )
    return response


async def login_page(request: web.Request) -> web.Response:
    """GET /login: the sign-in form (straight on to `next` when already signed in, or auth is off)."""
    next_url = safe_next(request.query.get("next"))
    if not request.app[AUTHORIZER].enabled or principal_of(request).via == "session":
        raise web.HTTPFound(next_url)
    return _login_page(request, next_url=next_url)


async def login(request: web.Request) -> web.Response:
    """POST /login: check the password, open a session, go on to `next`."""
    authorizer = request.app[AUTHORIZER]
    form = await request.post()
    next_url = safe_next(_field(form, "next"))
    if not authorizer.enabled:
        raise web.HTTPSeeOther(next_url)
    name = _field(form, "name").strip()[:MAX_NAME_LENGTH]
    password = _field(form, "password")
    sent, expected = _field(form, "login_csrf"), request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        message = "This sign-in form has expired (or cookies are blocked). Please try again."
        return _login_page(request, next_url=next_url, name=name, message=message, status=403)
    if not name or not password:
        message = "Enter your user name and password."
        return _login_page(request, next_url=next_url, name=name, message=message, status=400)
    try:
        principal = await authorizer.login(request, name, password)
    except Unauthenticated:
        message = "Unknown user name or wrong password."
        return _login_page(request, next_url=next_url, name=name, message=message, status=401)
    except TooManyRequests as exc:
        response = _login_page(request, next_url=next_url, name=name, message=exc.message, status=429)
        response.headers["Retry-After"] = str(exc.retry_after or 60)
        return response
    assert principal.user_id is not None
    settings = request.app[SETTINGS]
    identities = request.app[STORES].identities
    previous = request.cookies.get(SESSION_COOKIE)
    if previous:  # no session fixation: whatever id the browser had is dead from now on
        await identities.revoke_session(authorizer.digest("session", previous))
    session_id = credentials.new_session_id()
    lifetime_ms = int(settings.session_hours * 3_600_000)
    await identities.create_session(
        principal.user_id,
        authorizer.digest("session", session_id),
        credentials.new_csrf_token(),
        expires_at=now_ms() + lifetime_ms,
    )
    request[PRINCIPAL_KEY] = principal
    await audit(request, "session.create", "user", principal.name)
    response = web.HTTPSeeOther(next_url, headers=_NO_STORE)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=lifetime_ms // 1000,
        path="/",
        httponly=True,
        samesite="Lax",
        secure=_secure_cookies(request),
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.Response:
    """POST /logout: revoke this browser's session (the middleware has checked its CSRF token)."""
    authorizer = request.app[AUTHORIZER]
    response = web.HTTPSeeOther("/login" if authorizer.enabled else "/", headers=_NO_STORE)
    cookie = request.cookies.get(SESSION_COOKIE)
    if authorizer.enabled and cookie:
        await request.app[STORES].identities.revoke_session(authorizer.digest("session", cookie))
        authorizer.forget()  # this process refuses the cookie at once; other replicas within the cache time
        if principal_of(request).via == "session":
            await audit(request, "session.revoke", "user", principal_of(request).name)
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


def _field(form: Mapping[str, object], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""
