"""Signing in to the run browser, in-process: the sign-in page and its login-CSRF value, sessions and
their cookie, CSRF on session writes, signing out (revoked server-side), and the pages' permission
checks. tests/test_auth_browser.py walks the same paths in a real browser."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from yarl import URL

from kiseki_server.app import create_app
from kiseki_server.appkeys import POOL
from kiseki_server.auth.authorizer import SESSION_COOKIE
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import Level
from kiseki_server.config import Settings
from kiseki_server.web.login import LOGIN_CSRF_COOKIE, safe_next
from tests.authkit import ADMIN_TOKEN, Person, auth_settings, bearer, grant, make_user
from tests.helpers import call

PASSWORD = "correct horse battery"


@dataclass(frozen=True, slots=True)
class World:
    client: TestClient
    alice: Person
    """A non-admin user with a password; default permission read."""
    open_id: str
    """An experiment alice may read (the default)."""
    hidden_id: str
    """An experiment alice has NONE on."""
    open_run: str
    hidden_run: str


async def _experiment(client: TestClient, name: str) -> tuple[str, str]:
    admin = bearer(ADMIN_TOKEN)
    experiment_id = (
        await call(client, "POST", "/api/v1/experiments", 201, json={"name": name}, headers=admin)
    )["experiment_id"]
    run = await call(
        client,
        "POST",
        "/api/v1/runs",
        201,
        json={"experiment_id": experiment_id, "run_name": name},
        headers=admin,
    )
    return experiment_id, run["info"]["run_id"]


async def _world(aiohttp_client: Any, settings: Settings) -> World:
    client: TestClient = await aiohttp_client(create_app(settings))
    alice = await make_user(client, "alice", password=PASSWORD)
    open_id, open_run = await _experiment(client, "open-exp")
    hidden_id, hidden_run = await _experiment(client, "hidden-exp")
    await grant(client, hidden_id, alice, Level.NONE)
    return World(client, alice, open_id, hidden_id, open_run, hidden_run)


@pytest.fixture
async def world(aiohttp_client: Any, settings: Settings) -> World:
    return await _world(aiohttp_client, auth_settings(settings))


def _hidden(text: str, name: str) -> str:
    found = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)">', text)
    assert found, f"no hidden {name} field in the page: {text[:800]}"
    return html.unescape(found.group(1))


async def _form(client: TestClient, next_url: str = "/") -> str:
    response = await client.get(f"/login?next={quote(next_url, safe='')}")
    text = await response.text()
    assert response.status == 200, text
    assert response.headers.get("Cache-Control") == "no-store"
    return text


async def sign_in(
    client: TestClient, name: str = "alice", password: str = PASSWORD, next_url: str = "/", **extra: str
) -> aiohttp.ClientResponse:
    """Fetch the form (its login-CSRF cookie and field), post it; the response is not followed."""
    text = await _form(client, next_url)
    data = {"name": name, "password": password, "next": _hidden(text, "next")}
    data["login_csrf"] = _hidden(text, "login_csrf")
    data.update(extra)
    return await client.post("/login", data=data, allow_redirects=False)


def _session(client: TestClient) -> str:
    for cookie in client.session.cookie_jar:
        if cookie.key == SESSION_COOKIE:
            return cookie.value
    raise AssertionError("no session cookie in the jar")


async def test_anonymous_page_goes_to_the_sign_in_page_and_back(world: World) -> None:
    client = world.client
    asked = f"/experiments/{world.open_id}?view=all"
    response = await client.get(asked, allow_redirects=False)
    assert response.status == 302
    location = URL(response.headers["Location"])
    assert (location.path, location.query["next"]) == ("/login", asked)
    text = await _form(client, asked)
    assert _hidden(text, "next") == asked, "the form carries where to go after signing in"
    assert 'autocomplete="current-password"' in text and "Sign out" not in text
    signed_in = await sign_in(client, next_url=asked)
    assert signed_in.status == 303, await signed_in.text()
    assert signed_in.headers["Location"] == asked
    set_cookie = signed_in.headers.getall("Set-Cookie")
    session = next(c for c in set_cookie if c.startswith(f"{SESSION_COOKIE}="))
    for attribute in ("HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=604800"):
        assert attribute in session, f"{attribute} missing from {session}"
    assert "Secure" not in session, "plain HTTP on loopback: a Secure cookie would never come back"
    page = await client.get(asked)
    text = await page.text()
    assert page.status == 200 and "open-exp" in text
    assert '<span class="user" title="Signed in as alice">alice</span>' in text
    pool = client.server.app[POOL]
    stored = await pool.fetchval("SELECT csrf_token FROM sessions WHERE user_id = $1", world.alice.user_id)
    assert _hidden(text, "csrf_token") == stored, "the sign-out form carries the session's CSRF token"
    again = await client.get("/login?next=%2Fcompare", allow_redirects=False)
    assert (again.status, again.headers["Location"]) == (302, "/compare"), "signed in: no form again"
    events = await pool.fetch("SELECT action, user_name FROM audit_log WHERE action = 'session.create'")
    assert [(e["action"], e["user_name"]) for e in events] == [("session.create", "alice")]


async def test_wrong_password_shows_the_form_again_with_a_message(world: World) -> None:
    response = await sign_in(world.client, password="not the password")
    text = await response.text()
    assert response.status == 401
    assert "Unknown user name or wrong password." in text and 'value="alice"' in text
    assert "WWW-Authenticate" not in response.headers, "a Basic/Bearer challenge makes browsers pop a dialog"
    assert all(c.key != SESSION_COOKIE for c in world.client.session.cookie_jar)
    unknown = await sign_in(world.client, name="mallory")
    assert unknown.status == 401 and "Unknown user name or wrong password." in await unknown.text()


async def test_too_many_failures_get_a_429_page(aiohttp_client: Any, settings: Settings) -> None:
    world = await _world(aiohttp_client, auth_settings(settings, auth_failure_limit=2))
    for _ in range(2):
        assert (await sign_in(world.client, password="wrong-wrong")).status == 401
    limited = await sign_in(world.client)
    text = await limited.text()
    assert limited.status == 429, "even the right password waits once the address is over its budget"
    assert "too many failed sign-ins" in text and int(limited.headers["Retry-After"]) > 0
    assert "<form" in text and 'name="password"' in text


@pytest.mark.parametrize(
    ("field", "value"),
    [("login_csrf", ""), ("login_csrf", "A" * 43)],
    ids=["missing", "wrong"],
)
async def test_sign_in_needs_the_forms_double_submit_value(world: World, field: str, value: str) -> None:
    """Login CSRF: a page elsewhere cannot sign this browser in to an account of its choosing."""
    response = await sign_in(world.client, **{field: value})
    assert response.status == 403, await response.text()
    assert all(c.key != SESSION_COOKIE for c in world.client.session.cookie_jar)
    assert "expired" in await response.text()


async def test_sign_in_from_another_site_is_refused(world: World) -> None:
    text = await _form(world.client)
    data = {"name": "alice", "password": PASSWORD, "next": "/", "login_csrf": _hidden(text, "login_csrf")}
    response = await world.client.post(
        "/login", data=data, headers={"Origin": "https://evil.example"}, allow_redirects=False
    )
    assert response.status == 403


@pytest.mark.parametrize(
    ("asked", "went"),
    [
        ("/runs/abc?x=1#y", "/runs/abc?x=1#y"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/ok\r\nSet-Cookie: x=1", "/"),
        ("", "/"),
    ],
)
def test_next_is_only_ever_a_local_path(asked: str, went: str) -> None:
    assert safe_next(asked) == went


async def test_sign_in_never_redirects_off_site(world: World) -> None:
    response = await sign_in(world.client, next_url="//evil.example/x")
    assert (response.status, response.headers["Location"]) == (303, "/")


async def test_signing_in_replaces_an_earlier_session(world: World) -> None:
    """No session fixation: an id the browser already held (planted or not) dies at sign-in."""
    client = world.client
    assert (await sign_in(client)).status == 303
    first = _session(client)
    value = "b" * 43  # a double-submit pair made up by the browser is as good as one the server made
    again = await client.post(
        "/login",
        data={"name": "alice", "password": PASSWORD, "next": "/", "login_csrf": value},
        cookies={LOGIN_CSRF_COOKIE: value},
        allow_redirects=False,
    )
    assert again.status == 303, await again.text()
    assert _session(client) != first
    client.server.app[AUTHORIZER].forget()
    assert (await client.get("/", allow_redirects=False)).status == 200, "the new session works"
    client.session.cookie_jar.clear()
    replay = await client.get("/", cookies={SESSION_COOKIE: first}, allow_redirects=False)
    assert replay.status == 302, "the first session no longer signs anyone in"


async def test_pages_show_only_what_the_user_may_read(world: World) -> None:
    client = world.client
    assert (await sign_in(client)).status == 303
    listing = await (await client.get("/")).text()
    assert "open-exp" in listing and "hidden-exp" not in listing, "NONE hides an experiment from the list"
    found = await (await client.get("/?name=exp")).text()
    assert "hidden-exp" not in found
    for path in (
        f"/experiments/{world.hidden_id}",
        f"/runs/{world.hidden_run}",
        f"/runs/{world.hidden_run}/artifacts/download?path=x.txt",
        f"/compare?runs={world.open_run}&runs={world.hidden_run}",
    ):
        response = await client.get(path, allow_redirects=False)
        text = await response.text()
        assert response.status == 403, f"{path}: {response.status} {text[:300]}"
        assert "text/html" in response.headers["Content-Type"] and "NONE" in text
    assert (await client.get(f"/experiments/{world.open_id}")).status == 200
    assert (await client.get(f"/runs/{world.open_run}")).status == 200


async def test_a_run_page_leaves_out_family_alice_may_not_read(world: World) -> None:
    """A parent or child run may sit in another experiment: the run page must not leak it."""
    client, admin = world.client, bearer(ADMIN_TOKEN)
    body = {"experiment_id": world.open_id, "run_name": "middle", "parent_run_id": world.hidden_run}
    middle = (await call(client, "POST", "/api/v1/runs", 201, json=body, headers=admin))["info"]["run_id"]
    body = {"experiment_id": world.hidden_id, "run_name": "secret-child", "parent_run_id": middle}
    child = (await call(client, "POST", "/api/v1/runs", 201, json=body, headers=admin))["info"]["run_id"]
    seen = await (await client.get(f"/runs/{middle}", headers=admin)).text()
    assert world.hidden_run in seen and child in seen, "an admin sees the whole family"
    text = await (await client.get(f"/runs/{middle}", headers=world.alice.headers)).text()
    assert "middle" in text
    assert f'href="/runs/{world.hidden_run}"' not in text and "hidden-exp" not in text, (
        "the parent's id is the run's own data; its name, status and link are not"
    )
    assert child not in text and "secret-child" not in text


async def test_admins_and_tokens_see_everything_they_may(world: World) -> None:
    listing = await world.client.get("/", headers=bearer(ADMIN_TOKEN))
    text = await listing.text()
    assert "open-exp" in text and "hidden-exp" in text
    assert '<span class="user" title="Signed in as admin">admin</span>' in text
    assert "Sign out" not in text, "a token has no session to sign out of"
    alice = await (await world.client.get("/", headers=world.alice.headers)).text()
    assert "hidden-exp" not in alice


async def test_session_writes_need_the_csrf_token(world: World) -> None:
    client = world.client
    assert (await sign_in(client)).status == 303
    for data in ({}, {"csrf_token": "wrong"}):
        refused = await client.post("/logout", data=data, allow_redirects=False)
        assert refused.status == 403, f"{data}: {refused.status}"
        assert "CSRF" in await refused.text()
    api = await client.post(
        f"/api/v1/runs/{world.open_run}/tags", json={"key": "k", "value": "v"}, allow_redirects=False
    )
    assert api.status == 403, "a session's API writes need the token too (X-CSRF-Token)"
    assert (await client.get("/")).status == 200, "still signed in after the refused attempts"


async def test_sign_out_revokes_the_session_server_side(world: World) -> None:
    client = world.client
    assert (await sign_in(client)).status == 303
    cookie = _session(client)
    text = await (await client.get("/")).text()
    response = await client.post(
        "/logout", data={"csrf_token": _hidden(text, "csrf_token")}, allow_redirects=False
    )
    assert (response.status, response.headers["Location"]) == (303, "/login")
    cleared = next(c for c in response.headers.getall("Set-Cookie") if c.startswith(f"{SESSION_COOKIE}="))
    assert "Max-Age=0" in cleared or "expires=Thu, 01 Jan 1970" in cleared, cleared
    client.session.cookie_jar.clear()
    replay = await client.get("/", cookies={SESSION_COOKIE: cookie}, allow_redirects=False)
    assert replay.status == 302, "a copy of the cookie must not outlive signing out"
    pool = client.server.app[POOL]
    revoked = await pool.fetchval("SELECT revoked_at FROM sessions WHERE user_id = $1", world.alice.user_id)
    assert revoked is not None


async def test_cookies_are_secure_behind_an_https_public_url(aiohttp_client: Any, settings: Settings) -> None:
    world = await _world(aiohttp_client, auth_settings(settings, public_url="https://kiseki.example.org"))
    form = await world.client.get("/login")
    assert "Secure" in form.headers["Set-Cookie"]
    text = await form.text()
    # aiohttp's client jar keeps Secure cookies from plain-HTTP responses away from plain HTTP: send it.
    response = await world.client.post(
        "/login",
        data={"name": "alice", "password": PASSWORD, "next": "/", "login_csrf": _hidden(text, "login_csrf")},
        cookies={LOGIN_CSRF_COOKIE: _hidden(text, "login_csrf")},
        allow_redirects=False,
    )
    assert response.status == 303, await response.text()
    session = next(c for c in response.headers.getall("Set-Cookie") if c.startswith(f"{SESSION_COOKIE}="))
    assert "Secure" in session


async def test_with_auth_off_the_browser_is_open_as_before(client: TestClient) -> None:
    login = await client.get("/login?next=%2Fcompare", allow_redirects=False)
    assert (login.status, login.headers["Location"]) == (302, "/compare")
    posted = await client.post("/login", data={"name": "x", "password": "y"}, allow_redirects=False)
    assert (posted.status, posted.headers["Location"]) == (303, "/")
    page = await client.get("/")
    text = await page.text()
    assert page.status == 200 and "Sign out" not in text and 'class="account"' not in text
    logout = await client.post("/logout", allow_redirects=False)
    assert (logout.status, logout.headers["Location"]) == (303, "/")
