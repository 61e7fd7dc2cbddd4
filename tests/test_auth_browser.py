"""Signing in to the run browser in a real browser: Debian's headless Chromium driven by Playwright,
against a real `kiseki server` process with authentication on (KISEKI_AUTH, KISEKI_ADMIN_TOKEN), a user
with a password and an experiment hidden from them, all made through the admin API.

Screenshots land in test-output/screenshots/auth-*.png (git-ignored) for a human to look at.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest

from kiseki_server.auth import credentials
from tests.chromium import SCREENSHOTS, needs_chromium
from tests.conftest import create_database
from tests.servers import kiseki_server

PASSWORD = "a long enough password"

pytestmark = needs_chromium
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)


@dataclass(frozen=True, slots=True)
class Site:
    url: str
    open_id: str
    hidden_id: str


def _api(url: str, token: str, method: str, path: str, body: object) -> Any:
    request = urllib.request.Request(
        url + path,
        method=method,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


@pytest.fixture(scope="module")
def site(postgres_url: str, template_url: str) -> Iterator[Site]:
    """An auth-on server; user alice (password PASSWORD) may read `open-…` but has NONE on `hidden-…`."""
    token = credentials.new_token()
    database_url = create_database(postgres_url, f"kiseki_test_auth_browser_{uuid.uuid4().hex[:8]}")
    data_dir = tempfile.mkdtemp(prefix="kiseki-auth-browser-", dir="/tmp")
    env = {"KISEKI_AUTH": "true", "KISEKI_ADMIN_TOKEN": token, "KISEKI_DEFAULT_PERMISSION": "read"}
    try:
        with kiseki_server("--database-url", database_url, "--data-dir", data_dir, env=env) as (url, _):
            suffix = uuid.uuid4().hex[:6]
            made = [
                _api(url, token, "POST", "/api/v1/experiments", {"name": f"{kind}-{suffix}"})["experiment_id"]
                for kind in ("open", "hidden")
            ]
            _api(url, token, "POST", "/api/v1/users", {"name": "alice", "password": PASSWORD})
            _api(url, token, "PUT", f"/api/v1/experiments/{made[1]}/permissions/alice", {"level": "none"})
            yield Site(url, made[0], made[1])
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def context(browser: Any, problems: list[str]) -> Iterator[Any]:
    """A fresh browser profile (no cookies); the test fails on any error the page logged."""
    profile = browser.new_context(viewport={"width": 1280, "height": 800})
    profile.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    profile.on("weberror", lambda error: problems.append(str(error.error)))
    yield profile
    profile.close()
    assert not problems, f"the browser reported errors: {problems}"


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"auth-{name}.png"), full_page=True)


def sign_in_url(site: Site, asked: str) -> re.Pattern[str]:
    """The sign-in page's URL with `next=asked` (however the server chose to percent-encode it)."""
    encodings = {quote(asked, safe=""), quote(asked, safe="/")}
    return re.compile(re.escape(site.url + "/login?next=") + "(" + "|".join(map(re.escape, encodings)) + ")$")


def sign_in(page: Any, password: str = PASSWORD) -> None:
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_lands_on_the_page_asked_for_and_hides_what_alice_may_not_read(
    context: Any, site: Site, problems: list[str]
) -> None:
    expect = sync_api.expect
    page = context.new_page()
    asked = f"/experiments/{site.open_id}"
    page.goto(site.url + asked)
    expect(page).to_have_url(sign_in_url(site, asked))
    expect(page.locator("h1")).to_have_text("Sign in")
    shoot(page, "1-sign-in")

    sign_in(page, password="not the password")
    expect(page.get_by_role("alert")).to_have_text("Unknown user name or wrong password.")
    expect(page.get_by_label("User name")).to_have_value("alice")
    assert [p for p in problems if "401" in p], "the browser saw the 401"
    problems.clear()
    shoot(page, "2-wrong-password")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(site.url + asked)
    expect(page.locator("header .account .user")).to_have_text("alice")
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    cookie = next(c for c in context.cookies() if c["name"] == "kiseki_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax", cookie
    assert page.evaluate("document.cookie").find("kiseki_session") < 0, "scripts cannot read the session"
    shoot(page, "3-signed-in")

    page.goto(site.url + "/")
    links = page.locator("#experiments td.name a").evaluate_all("links => links.map(a => a.pathname)")
    assert f"/experiments/{site.open_id}" in links
    assert f"/experiments/{site.hidden_id}" not in links, "NONE hides the experiment from the list"
    response = page.goto(f"{site.url}/experiments/{site.hidden_id}")
    assert response.status == 403
    expect(page.locator(".error-message")).to_contain_text("NONE")
    assert [p for p in problems if "403" in p]
    problems.clear()
    shoot(page, "4-forbidden")


def _attacker(target: str) -> tuple[ThreadingHTTPServer, str]:
    """A page on another port of the same host — same *site* to the browser, so the Lax session cookie
    rides along and the Origin host matches: only the CSRF token stops its forms."""
    forms = "".join(
        f'<form method="post" action="{target}/logout">{field}<button>{label}</button></form>'
        for label, field in (
            ("no token", ""),
            ("wrong token", '<input type="hidden" name="csrf_token" value="guessed">'),
        )
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(forms)))
            self.end_headers()
            self.wfile.write(forms)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def test_csrf_and_sign_out_revoke_the_session(
    browser: Any, context: Any, site: Site, problems: list[str]
) -> None:
    expect = sync_api.expect
    page = context.new_page()
    page.goto(site.url + "/login")
    sign_in(page)
    expect(page.locator("h1")).to_have_text("Experiments")

    server, attacker_url = _attacker(site.url)
    try:
        for label in ("no token", "wrong token"):
            page.goto(attacker_url)
            with page.expect_response(f"{site.url}/logout") as answer:
                page.get_by_role("button", name=label).click()
            assert answer.value.status == 403, f"{label}: {answer.value.status}"
            expect(page.locator(".error-message")).to_contain_text("CSRF")
    finally:
        server.shutdown()
        server.server_close()
    shoot(page, "5-csrf-refused")
    assert [p for p in problems if "403" in p]
    problems.clear()
    page.goto(site.url + "/")
    expect(page.locator("header .account .user")).to_have_text("alice", timeout=5000)

    copied = next(c for c in context.cookies() if c["name"] == "kiseki_session")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(site.url + "/login")
    assert not [c for c in context.cookies() if c["name"] == "kiseki_session"], "the cookie is cleared"
    page.goto(site.url + "/")
    expect(page).to_have_url(sign_in_url(site, "/"))
    shoot(page, "6-signed-out")

    replay = browser.new_context()
    try:
        replay.add_cookies([copied])
        stolen = replay.new_page()
        stolen.goto(site.url + "/")
        # Revoked server-side, not just dropped by the browser: the copy leads to the sign-in page.
        expect(stolen).to_have_url(sign_in_url(site, "/"))
    finally:
        replay.close()
