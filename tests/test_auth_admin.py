"""The access-control API in-process: /whoami, /users, /tokens, /experiments/{id}/permissions, /audit.

Each test builds an auth-on app (the admin token of tests.authkit registered for user `admin`) on a
database of its own, with the local artifact store under the test's folder.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from kiseki_server import openapi
from kiseki_server.app import ROUTES, create_app
from kiseki_server.appkeys import POOL
from kiseki_server.auth import credentials
from kiseki_server.auth.authorizer import SESSION_COOKIE
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.config import Settings
from kiseki_server.handlers import admin
from kiseki_server.stores.identities import IdentityStore
from tests.authkit import ADMIN_TOKEN, Person, auth_settings, bearer, make_user

ADMIN = bearer(ADMIN_TOKEN)
PASSWORD = "correct horse battery"

Call = Callable[..., Awaitable[tuple[int, Any]]]


@pytest.fixture
def local_settings(settings: Settings) -> Settings:
    """The local artifact store (purges must really reach a store; this one needs no S3 server)."""
    return settings.model_copy(update={"default_artifact_root": (settings.data_dir / "artifacts").as_uri()})


@pytest.fixture
async def client(aiohttp_client: Any, local_settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(auth_settings(local_settings)))


@pytest.fixture
def call(client: TestClient) -> Call:
    async def request(method: str, path: str, headers: dict[str, str], **kwargs: Any) -> tuple[int, Any]:
        async with client.request(method, path, headers=headers, allow_redirects=False, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body

    return request


def _error_field(body: Any) -> str | None:
    field: str | None = body["error"]["field"]
    return field


def _basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


# --- whoami --------------------------------------------------------------------------------------------


async def test_whoami_with_auth_off_is_the_anonymous_admin(
    aiohttp_client: Any, local_settings: Settings
) -> None:
    client = await aiohttp_client(create_app(local_settings))
    response = await client.get("/api/v1/whoami")
    assert response.status == 200
    assert await response.json() == {
        "user": "anonymous",
        "is_admin": True,
        "scope": "admin",
        "via": "anonymous",
        "auth_enabled": False,
    }


async def test_whoami_names_the_token_user_and_scope(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice", scope="read")
    status, body = await call("GET", "/api/v1/whoami", alice.headers)
    assert status == 200
    assert body == {"user": "alice", "is_admin": False, "scope": "read", "via": "token", "auth_enabled": True}
    status, body = await call("GET", "/api/v1/whoami", {})
    assert status == 401, "whoami needs a credential like everything else"


# --- users ---------------------------------------------------------------------------------------------


async def test_admin_creates_lists_and_gets_users(client: TestClient, call: Call) -> None:
    status, body = await call(
        "POST", "/api/v1/users", ADMIN, json={"name": "alice", "password": PASSWORD, "is_admin": False}
    )
    assert status == 201, body
    assert body["name"] == "alice" and body["has_password"] is True and body["kind"] == "user"
    assert "password" not in body and "password_hash" not in body
    status, body = await call("POST", "/api/v1/users", ADMIN, json={"name": "ci-bot", "kind": "service"})
    assert status == 201 and body["has_password"] is False
    status, body = await call("GET", "/api/v1/users", ADMIN)
    assert status == 200
    assert [u["name"] for u in body["users"]] == ["admin", "alice", "ci-bot"]
    status, body = await call("GET", "/api/v1/users/ci-bot", ADMIN)
    assert status == 200 and body["kind"] == "service"
    # The password works for HTTP Basic (what MLFLOW_TRACKING_USERNAME/PASSWORD send).
    status, body = await call("GET", "/api/v1/whoami", _basic("alice", PASSWORD))
    assert status == 200 and body["via"] == "password"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "has space"}, 422, "name"),
        ({"name": "x:y"}, 422, "name"),
        ({"name": ""}, 422, "name"),
        ({"name": "bob", "password": "short"}, 422, "password"),
        ({"name": "bob", "password": credentials.new_token()}, 422, "password"),
        ({"name": "bob", "kind": "robot"}, 422, "kind"),
        ({"name": "bob", "role": "admin"}, 422, "role"),
        ({"name": "admin"}, 409, "name"),
    ],
)
async def test_bad_users_are_refused_naming_the_field(
    client: TestClient, call: Call, body: dict[str, Any], status: int, field: str
) -> None:
    got, answer = await call("POST", "/api/v1/users", ADMIN, json=body)
    assert got == status, answer
    assert _error_field(answer) == field


async def test_user_routes_are_for_admins_with_an_admin_credential(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice")
    boss = await make_user(client, "boss", is_admin=True, scope="write")
    for headers in (alice.headers, boss.headers):
        status, body = await call("GET", "/api/v1/users", headers)
        assert status == 403, f"a write-scoped credential is no admin credential: {body}"
        status, _ = await call("POST", "/api/v1/users", headers, json={"name": "mallory", "is_admin": True})
        assert status == 403
    status, _ = await call("GET", "/api/v1/users/mallory", ADMIN)
    assert status == 404


async def test_unknown_or_impossible_user_names_are_not_found(client: TestClient, call: Call) -> None:
    for name in ("nobody", "a%20b", "%00"):
        status, body = await call("GET", f"/api/v1/users/{name}", ADMIN)
        assert status == 404, body
        assert _error_field(body) in ("user", "user_name")
        status, body = await call("PATCH", f"/api/v1/users/{name}", ADMIN, json={"disabled": True})
        assert status == 404, body


async def test_disabling_a_user_stops_their_tokens_and_sessions_at_once(
    client: TestClient, call: Call
) -> None:
    alice = await make_user(client, "alice")
    identities = IdentityStore(client.server.app[POOL])
    session = credentials.new_session_id()
    digest = client.server.app[AUTHORIZER].digest("session", session)
    await identities.create_session(
        alice.user_id, digest, "csrf", expires_at=int(time.time() * 1000) + 60_000
    )
    cookie = {"Cookie": f"{SESSION_COOKIE}={session}"}
    assert (await call("GET", "/api/v1/whoami", alice.headers))[0] == 200
    assert (await call("GET", "/api/v1/whoami", cookie))[1]["via"] == "session"

    status, body = await call("PATCH", "/api/v1/users/alice", ADMIN, json={"disabled": True})
    assert status == 200 and body["disabled_at"] is not None
    status, body = await call("GET", "/api/v1/whoami", alice.headers)
    assert status == 401, "a disabled user's token must stop working at once"
    assert "disabled" in body["error"]["message"]
    assert (await call("GET", "/api/v1/whoami", cookie))[0] == 401
    revoked = await client.server.app[POOL].fetchval(
        "SELECT revoked_at FROM sessions WHERE digest = $1", digest
    )
    assert revoked is not None, "disabling revokes the user's sessions (not just hides them)"

    status, body = await call("PATCH", "/api/v1/users/alice", ADMIN, json={"disabled": False})
    assert status == 200 and body["disabled_at"] is None
    assert (await call("GET", "/api/v1/whoami", alice.headers))[0] == 200, "enabled again: tokens work"
    assert (await call("GET", "/api/v1/whoami", cookie))[0] == 401, "revoked sessions stay revoked"


async def test_password_change_and_admin_flag(client: TestClient, call: Call) -> None:
    await make_user(client, "alice", password=PASSWORD)
    status, body = await call("PATCH", "/api/v1/users/alice", ADMIN, json={"password": "new password 2"})
    assert status == 200, body
    assert (await call("GET", "/api/v1/whoami", _basic("alice", PASSWORD)))[0] == 401
    status, body = await call("GET", "/api/v1/whoami", _basic("alice", "new password 2"))
    assert status == 200 and body["is_admin"] is False
    status, body = await call("PATCH", "/api/v1/users/alice", ADMIN, json={"is_admin": True})
    assert status == 200 and body["is_admin"] is True
    status, body = await call("GET", "/api/v1/whoami", _basic("alice", "new password 2"))
    assert body["is_admin"] is True and body["scope"] == "admin"
    status, body = await call("PATCH", "/api/v1/users/alice", ADMIN, json={"password": "short"})
    assert status == 422 and _error_field(body) == "password"
    status, body = await call("PATCH", "/api/v1/users/alice", ADMIN, json={"disabled": "maybe"})
    assert status == 422 and _error_field(body) == "disabled"


async def test_an_admin_cannot_lock_themselves_out(client: TestClient, call: Call) -> None:
    for change, field in (({"disabled": True}, "disabled"), ({"is_admin": False}, "is_admin")):
        status, body = await call("PATCH", "/api/v1/users/admin", ADMIN, json=change)
        assert status == 409, body
        assert _error_field(body) == field
    assert (await call("GET", "/api/v1/users", ADMIN))[0] == 200


# --- tokens --------------------------------------------------------------------------------------------


async def _create_token(call: Call, headers: dict[str, str], **body: Any) -> tuple[str, dict[str, Any]]:
    status, answer = await call("POST", "/api/v1/tokens", headers, json=body)
    assert status == 201, answer
    assert credentials.looks_like_token(answer["token"])
    return answer["token"], answer["info"]


async def test_own_tokens_create_list_use_and_revoke(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice")
    secret, info = await _create_token(call, alice.headers, name="laptop", scope="read")
    assert info["user"] == "alice" and info["scope"] == "read" and info["name"] == "laptop"
    status, body = await call("GET", "/api/v1/whoami", bearer(secret))
    assert status == 200 and body == {
        "user": "alice",
        "is_admin": False,
        "scope": "read",
        "via": "token",
        "auth_enabled": True,
    }
    status, body = await call("POST", "/api/v1/experiments", bearer(secret), json={"name": "x"})
    assert status == 403, "a read token never writes"

    async with client.get("/api/v1/tokens", headers=alice.headers) as response:
        text = await response.text()
        listing = await response.json()
    assert secret not in text, "a token's secret is shown only when it is created"
    assert [t["name"] for t in listing["tokens"]] == ["test", "laptop"]
    assert all(t["user"] == "alice" for t in listing["tokens"])
    assert listing["tokens"][1]["last_used_at"] is not None, "last use is recorded"

    status, body = await call("DELETE", f"/api/v1/tokens/{info['token_id']}", alice.headers)
    assert status == 200 and body["revoked_at"] is not None
    status, body = await call("GET", "/api/v1/whoami", bearer(secret))
    assert status == 401, "a revoked token is refused at once by the replica that revoked it"
    assert "revoked" in body["error"]["message"]
    assert (await call("GET", "/api/v1/whoami", alice.headers))[0] == 200, "only that token is revoked"


async def test_a_token_never_exceeds_the_callers_scope(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice", scope="write")
    reader = await make_user(client, "reader", scope="read")
    status, body = await call("POST", "/api/v1/tokens", alice.headers, json={"scope": "admin"})
    assert status == 403 and _error_field(body) == "scope"
    status, body = await call("POST", "/api/v1/tokens", reader.headers, json={"scope": "read"})
    assert status == 403, "a read-scoped credential cannot mint tokens (it would outlive its revocation)"
    assert (await call("GET", "/api/v1/tokens", reader.headers))[0] == 200, "but it may list its own"
    boss = await make_user(client, "boss", is_admin=True, scope="write")
    status, body = await call("POST", "/api/v1/tokens", boss.headers, json={"scope": "admin"})
    assert status == 403 and _error_field(body) == "scope", "an admin's write token makes no admin token"
    _, info = await _create_token(call, ADMIN, scope="admin", name="ops")
    assert info["user"] == "admin" and info["scope"] == "admin"


async def test_others_tokens_are_for_admins_only(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice")
    bob = await make_user(client, "bob")
    status, body = await call("POST", "/api/v1/tokens", alice.headers, json={"user": "bob"})
    assert status == 403 and _error_field(body) == "user"
    status, body = await call("GET", "/api/v1/tokens", alice.headers, params={"user": "bob"})
    assert status == 403 and _error_field(body) == "user"
    bob_tokens = (await call("GET", "/api/v1/tokens", bob.headers))[1]["tokens"]
    status, body = await call("DELETE", f"/api/v1/tokens/{bob_tokens[0]['token_id']}", alice.headers)
    assert status == 404, "another user's token is not even shown to exist"
    assert (await call("GET", "/api/v1/whoami", bob.headers))[0] == 200
    # Naming yourself is fine.
    _, info = await _create_token(call, alice.headers, user="alice")
    assert info["user"] == "alice"

    # An admin makes, lists and revokes anyone's tokens.
    secret, info = await _create_token(call, ADMIN, user="bob", scope="read", expires_in_seconds=3600)
    assert info["user"] == "bob" and info["expires_at"] is not None
    assert (await call("GET", "/api/v1/whoami", bearer(secret)))[1]["user"] == "bob"
    status, body = await call("GET", "/api/v1/tokens", ADMIN, params={"user": "bob"})
    assert status == 200 and len(body["tokens"]) == 2
    status, body = await call("POST", "/api/v1/tokens", ADMIN, json={"user": "bob", "scope": "admin"})
    assert status == 403 and _error_field(body) == "scope", "bob is no admin: no admin token for him"
    status, _ = await call("DELETE", f"/api/v1/tokens/{bob_tokens[0]['token_id']}", ADMIN)
    assert status == 200
    assert (await call("GET", "/api/v1/whoami", bob.headers))[0] == 401


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"scope": "root"}, 422, "scope"),
        ({"expires_in_seconds": 10}, 422, "expires_in_seconds"),
        ({"name": "x" * 201}, 422, "name"),
        ({"user": "nobody"}, 404, "user"),
        ({"token": "ksk_mine"}, 422, "token"),
    ],
)
async def test_bad_token_requests_name_the_field(
    client: TestClient, call: Call, body: dict[str, Any], status: int, field: str
) -> None:
    got, answer = await call("POST", "/api/v1/tokens", ADMIN, json=body)
    assert got == status, answer
    assert _error_field(answer) == field


async def test_revoking_an_unknown_token(client: TestClient, call: Call) -> None:
    for token_id in ("999999", "abc", "99999999999999999999"):
        status, body = await call("DELETE", f"/api/v1/tokens/{token_id}", ADMIN)
        assert status == 404, body
        assert _error_field(body) == "token_id"


async def test_expired_tokens_are_refused(client: TestClient, call: Call) -> None:
    expired = await make_user(client, "expired", expires_at=int(time.time() * 1000) - 1)
    status, body = await call("GET", "/api/v1/whoami", expired.headers)
    assert status == 401 and "expired" in body["error"]["message"]
    _, info = await _create_token(call, ADMIN, expires_in_seconds=60, name="soon")
    secret, info = await _create_token(call, ADMIN, expires_in_seconds=60)
    assert (await call("GET", "/api/v1/whoami", bearer(secret)))[0] == 200
    await client.server.app[POOL].execute(
        "UPDATE api_tokens SET expires_at = 1 WHERE token_id = $1", int(info["token_id"])
    )
    client.server.app[AUTHORIZER].forget()
    assert (await call("GET", "/api/v1/whoami", bearer(secret)))[0] == 401


async def test_a_disabled_user_gets_no_new_tokens(client: TestClient, call: Call) -> None:
    await make_user(client, "alice")
    await call("PATCH", "/api/v1/users/alice", ADMIN, json={"disabled": True})
    status, body = await call("POST", "/api/v1/tokens", ADMIN, json={"user": "alice"})
    assert status == 409 and _error_field(body) == "user"


async def test_tokens_with_auth_off(aiohttp_client: Any, local_settings: Settings) -> None:
    """Auth off, the API still manages tokens (set them up before turning auth on); anonymous owns none."""
    client = await aiohttp_client(create_app(local_settings))
    response = await client.post("/api/v1/users", json={"name": "alice"})
    assert response.status == 201
    response = await client.post("/api/v1/tokens", json={"scope": "write"})
    assert response.status == 403
    assert (await response.json())["error"]["field"] == "user"
    response = await client.post("/api/v1/tokens", json={"user": "alice"})
    assert response.status == 201
    response = await client.get("/api/v1/tokens")
    assert [t["user"] for t in (await response.json())["tokens"]] == ["alice"]


# --- permissions ---------------------------------------------------------------------------------------


async def _experiment(call: Call, owner: Person, name: str = "private") -> str:
    status, body = await call("POST", "/api/v1/experiments", owner.headers, json={"name": name})
    assert status == 201, body
    experiment_id: str = body["experiment_id"]
    return experiment_id


async def test_permissions_decide_what_a_user_can_do(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice")
    bob = await make_user(client, "bob")
    experiment_id = await _experiment(call, alice)
    one = f"/api/v1/experiments/{experiment_id}"
    assert (await call("GET", one, bob.headers))[0] == 200, "the default permission is read"
    assert (await call("PATCH", one, bob.headers, json={"name": "bob's"}))[0] == 403

    status, body = await call("PUT", f"{one}/permissions/bob", alice.headers, json={"level": "none"})
    assert status == 200 and body == {"experiment_id": experiment_id, "user": "bob", "level": "none"}
    assert (await call("GET", one, bob.headers))[0] == 403, "NONE: the experiment is hidden at once"
    listed = (await call("GET", "/api/v1/experiments", bob.headers))[1]["experiments"]
    assert experiment_id not in [e["experiment_id"] for e in listed], "nor listed"

    await call("PUT", f"{one}/permissions/bob", alice.headers, json={"level": "edit"})
    assert (await call("PATCH", one, bob.headers, json={"name": "shared"}))[0] == 200, "EDIT renames"
    status, body = await call("PUT", f"{one}/permissions/bob", bob.headers, json={"level": "manage"})
    assert status == 403, "EDIT is not MANAGE: bob cannot raise himself"
    assert (await call("GET", f"{one}/permissions", bob.headers))[0] == 403

    status, body = await call("GET", f"{one}/permissions", alice.headers)
    assert status == 200
    assert body == {
        "permissions": [
            {"experiment_id": experiment_id, "user": "alice", "level": "manage"},
            {"experiment_id": experiment_id, "user": "bob", "level": "edit"},
        ],
        "default": "read",
    }, "the creator manages the experiment"

    status, body = await call("DELETE", f"{one}/permissions/bob", alice.headers)
    assert status == 200 and [p["user"] for p in body["permissions"]] == ["alice"]
    assert (await call("PATCH", one, bob.headers, json={"name": "again"}))[0] == 403, "back to the default"
    status, body = await call("DELETE", f"{one}/permissions/bob", alice.headers)
    assert status == 200, "deleting a permission that is not there is harmless"


async def test_a_manager_can_hand_over_management(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice")
    carol = await make_user(client, "carol")
    experiment_id = await _experiment(call, alice)
    one = f"/api/v1/experiments/{experiment_id}"
    assert (await call("DELETE", one, carol.headers))[0] == 403
    await call("PUT", f"{one}/permissions/carol", alice.headers, json={"level": "manage"})
    status, _ = await call("PUT", f"{one}/permissions/alice", carol.headers, json={"level": "read"})
    assert status == 200
    assert (await call("DELETE", one, alice.headers))[0] == 403
    assert (await call("DELETE", one, carol.headers))[0] == 200


@pytest.mark.parametrize(
    ("path", "body", "status", "field"),
    [
        ("/permissions/bob", {"level": "owner"}, 422, "level"),
        ("/permissions/bob", {"level": 3}, 422, "level"),
        ("/permissions/bob", {}, 422, "level"),
        ("/permissions/nobody", {"level": "read"}, 404, "user"),
        ("/permissions/bad%20name", {"level": "read"}, 404, "user_name"),
    ],
)
async def test_bad_permission_requests_name_the_field(
    client: TestClient, call: Call, path: str, body: dict[str, Any], status: int, field: str
) -> None:
    alice = await make_user(client, "alice")
    await make_user(client, "bob")
    experiment_id = await _experiment(call, alice)
    got, answer = await call("PUT", f"/api/v1/experiments/{experiment_id}{path}", alice.headers, json=body)
    assert got == status, answer
    assert _error_field(answer) == field


async def test_permissions_of_an_unknown_experiment(client: TestClient, call: Call) -> None:
    await make_user(client, "bob")
    for method, path, body in (
        ("GET", "/api/v1/experiments/424242/permissions", None),
        ("PUT", "/api/v1/experiments/424242/permissions/bob", {"level": "read"}),
        ("DELETE", "/api/v1/experiments/424242/permissions/bob", None),
    ):
        status, answer = await call(method, path, ADMIN, json=body)
        assert status == 404, answer
        assert _error_field(answer) == "experiment_id"


# --- audit ---------------------------------------------------------------------------------------------


async def _events(call: Call, **params: Any) -> list[dict[str, Any]]:
    status, body = await call("GET", "/api/v1/audit", ADMIN, params=params)
    assert status == 200, body
    events: list[dict[str, Any]] = body["events"]
    return events


async def test_audit_records_who_did_what(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice")
    experiment_id = await _experiment(call, alice)
    one = f"/api/v1/experiments/{experiment_id}"
    status, run = await call("POST", "/api/v1/runs", alice.headers, json={"experiment_id": experiment_id})
    assert status == 201
    run_id = run["info"]["run_id"]
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("PATCH", one, {"name": "renamed"}),
        ("DELETE", f"/api/v1/runs/{run_id}", {}),
        ("POST", f"/api/v1/runs/{run_id}/restore", {}),
        ("DELETE", f"/api/v1/runs/{run_id}/artifacts", {}),
        ("DELETE", f"{one}/artifacts", {}),
        ("DELETE", one, {}),
        ("POST", f"{one}/restore", {}),
    ]
    for method, path, body in steps:
        status, answer = await call(method, path, alice.headers, **({"json": body} if body else {}))
        assert status == 200, (method, path, answer)
    await call("POST", "/api/v1/users", ADMIN, json={"name": "bob"})
    await call("PATCH", "/api/v1/users/bob", ADMIN, json={"is_admin": True})
    _, info = await _create_token(call, ADMIN, user="bob", name="bob's")
    await call("DELETE", f"/api/v1/tokens/{info['token_id']}", ADMIN)
    await call("PUT", f"{one}/permissions/bob", alice.headers, json={"level": "edit"})
    await call("DELETE", f"{one}/permissions/bob", alice.headers)

    events = list(reversed(await _events(call)))
    seen = [(e["user"], e["action"], e["target_type"], e["target_id"]) for e in events]
    assert seen == [
        ("alice", "experiment.create", "experiment", experiment_id),
        ("alice", "experiment.rename", "experiment", experiment_id),
        ("alice", "run.delete", "run", run_id),
        ("alice", "run.restore", "run", run_id),
        ("alice", "artifacts.purge", "run", run_id),
        ("alice", "artifacts.purge", "experiment", experiment_id),
        ("alice", "experiment.delete", "experiment", experiment_id),
        ("alice", "experiment.restore", "experiment", experiment_id),
        ("admin", "user.create", "user", "bob"),
        ("admin", "user.update", "user", "bob"),
        ("admin", "token.create", "token", info["token_id"]),
        ("admin", "token.revoke", "token", info["token_id"]),
        ("alice", "permission.set", "experiment", experiment_id),
        ("alice", "permission.delete", "experiment", experiment_id),
    ]
    by_action = {e["action"]: e for e in events}
    assert by_action["experiment.rename"]["detail"] == {"name": "renamed"}
    assert by_action["artifacts.purge"]["detail"] == {"runs": 1, "deleted_files": 0, "aborted_uploads": 0}
    assert by_action["permission.set"]["detail"] == {"user": "bob", "level": "edit"}
    assert by_action["user.update"]["detail"] == {"is_admin": True, "sessions_revoked": 0}
    assert by_action["token.create"]["detail"] == {"user": "bob", "scope": "write", "name": "bob's"}
    assert all(e["client"] == "127.0.0.1" for e in events), "the client address is recorded"
    assert all(e["at"] > 0 for e in events)


async def test_audit_filters_pages_and_is_for_admins(client: TestClient, call: Call) -> None:
    alice = await make_user(client, "alice")
    created = [await _experiment(call, alice, f"e{i}") for i in range(3)]
    await call("DELETE", f"/api/v1/experiments/{created[0]}", alice.headers)
    deletes = await _events(call, action="experiment.delete")
    assert [e["target_id"] for e in deletes] == [created[0]]

    pages: list[str] = []
    params: dict[str, Any] = {"action": "experiment.create", "max_results": 2}
    while True:
        status, body = await call("GET", "/api/v1/audit", ADMIN, params=params)
        assert status == 200
        pages.extend(e["target_id"] for e in body["events"])
        if not body["next_page_token"]:
            break
        params["page_token"] = body["next_page_token"]
    assert pages == list(reversed(created)), "newest first, every event once across pages"

    assert (await call("GET", "/api/v1/audit", alice.headers))[0] == 403
    for params, field in (({"max_results": 0}, "max_results"), ({"page_token": "garbage!"}, "page_token")):
        status, body = await call("GET", "/api/v1/audit", ADMIN, params=params)
        assert status == 400 and _error_field(body) == field


async def test_audit_with_auth_off_records_anonymous(aiohttp_client: Any, local_settings: Settings) -> None:
    client = await aiohttp_client(create_app(local_settings))
    response = await client.post("/api/v1/experiments", json={"name": "open"})
    assert response.status == 201
    response = await client.get("/api/v1/audit")
    events = (await response.json())["events"]
    assert [(e["user"], e["action"]) for e in events] == [("anonymous", "experiment.create")]


# --- the route table -----------------------------------------------------------------------------------


def test_every_admin_route_is_documented_with_its_access() -> None:
    document = openapi.build(ROUTES)
    for route in admin.ROUTES:
        operation = document["paths"][route.path][route.method.lower()]
        access = operation["x-kiseki-access"]
        assert route.access is not None and access is not None, f"{route.method} {route.path} is open"
        assert access["scope"] == route.access.scope.label
