"""Experiments API: lifecycle, names, tags, pagination, races."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import call, new_experiment

API = "/api/v1/experiments"


async def test_create_get_and_by_name(client):
    created = await call(
        client, "POST", API, 201, json={"name": "bert/finetune", "tags": {"team": "nlp", "owner": "ana"}}
    )
    assert created["experiment_id"].isdigit(), "experiment ids are decimal strings, as in MLflow"
    assert created["lifecycle_stage"] == "active"
    assert created["tags"] == {"team": "nlp", "owner": "ana"}
    assert created["artifact_location"] == f"s3://kiseki-test/artifacts/{created['experiment_id']}"
    assert await call(client, "GET", f"{API}/{created['experiment_id']}") == created
    by_name = await call(client, "GET", f"{API}/by-name", params={"name": "bert/finetune"})
    assert by_name == created


async def test_explicit_artifact_location_is_kept(client):
    body = await call(client, "POST", API, 201, json={"name": "e", "artifact_location": "s3://other/place"})
    assert body["artifact_location"] == "s3://other/place"


async def test_artifact_location_inside_the_managed_root_is_refused(client, conn):
    location = "s3://kiseki-test/artifacts/1/" + "a" * 32 + "/artifacts"
    error = (await call(client, "POST", API, 400, json={"name": "e", "artifact_location": location}))["error"]
    assert error["field"] == "artifact_location"
    assert await conn.fetchval("SELECT count(*) FROM experiments") == 0


async def test_duplicate_active_name_is_409(client):
    await new_experiment(client, "dup")
    body = await call(client, "POST", API, 409, json={"name": "dup"})
    assert body["error"]["field"] == "name"
    assert "dup" in body["error"]["message"]


async def test_get_or_create_under_50_concurrent_callers_yields_one_experiment(client, conn):
    results = await asyncio.gather(
        *(call(client, "POST", f"{API}/get-or-create", json={"name": "race"}) for _ in range(50))
    )
    ids = {r["experiment"]["experiment_id"] for r in results}
    assert len(ids) == 1, f"racing get-or-create produced several experiments: {ids}"
    assert sum(r["created"] for r in results) == 1, "exactly one caller should report having created it"
    assert await conn.fetchval("SELECT count(*) FROM experiments WHERE name = 'race'") == 1


async def test_delete_frees_the_name_and_restore_then_conflicts(client):
    old = await new_experiment(client, "reused")
    deleted = await call(client, "DELETE", f"{API}/{old}")
    assert deleted["lifecycle_stage"] == "deleted"
    assert (await call(client, "GET", f"{API}/by-name", 404, params={"name": "reused"}))["error"][
        "field"
    ] == "name"

    # A deleted experiment never blocks its name: get-or-create makes a fresh one.
    fresh = await call(client, "POST", f"{API}/get-or-create", json={"name": "reused"})
    assert fresh["created"]
    assert fresh["experiment"]["experiment_id"] != old

    error = (await call(client, "POST", f"{API}/{old}/restore", 409))["error"]
    assert "reused" in error["message"]
    assert "rename" in error["message"]

    await call(client, "PATCH", f"{API}/{fresh['experiment']['experiment_id']}", json={"name": "reused-2"})
    restored = await call(client, "POST", f"{API}/{old}/restore")
    assert restored["lifecycle_stage"] == "active"
    assert restored["name"] == "reused"


async def test_rename_and_rename_conflict(client):
    a = await new_experiment(client, "a")
    await new_experiment(client, "b")
    assert (await call(client, "PATCH", f"{API}/{a}", json={"name": "c"}))["name"] == "c"
    assert (await call(client, "PATCH", f"{API}/{a}", 409, json={"name": "b"}))["error"]["field"] == "name"


async def test_tags_set_overwrite_delete(client):
    e = await new_experiment(client)
    await call(client, "POST", f"{API}/{e}/tags", json={"key": "stage", "value": "dev"})
    body = await call(client, "POST", f"{API}/{e}/tags", json={"key": "stage", "value": "prod"})
    assert body["tags"] == {"stage": "prod"}
    body = await call(client, "DELETE", f"{API}/{e}/tags", params={"key": "stage"})
    assert body["tags"] == {}
    await call(client, "DELETE", f"{API}/{e}/tags", 404, params={"key": "stage"})
    await call(client, "POST", f"{API}/999999/tags", 404, json={"key": "k", "value": "v"})


async def test_list_pages_and_filters(client):
    for i in range(7):
        await new_experiment(client, f"proj-{i}")
    await new_experiment(client, "other")
    seen: list[str] = []
    token = None
    while True:
        params = {"max_results": "3", "name_like": "PROJ-%"}
        if token:
            params["page_token"] = token
        page = await call(client, "GET", API, params=params)
        seen += [e["name"] for e in page["experiments"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == [f"proj-{i}" for i in reversed(range(7))], (
        "newest first, each exactly once, filter applied"
    )


async def test_view_types(client):
    keep, gone = await new_experiment(client, "keep"), await new_experiment(client, "gone")
    await call(client, "DELETE", f"{API}/{gone}")

    async def names(view: str) -> set[str]:
        return {
            e["name"] for e in (await call(client, "GET", API, params={"view_type": view}))["experiments"]
        }

    assert await names("active_only") == {"keep"}
    assert await names("deleted_only") == {"gone"}
    assert await names("all") == {"keep", "gone"}
    assert keep != gone


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "field"),
    [
        ("POST", API, {"json": {"name": ""}}, 422, "name"),
        ("POST", API, {"json": {"name": "   "}}, 422, "name"),
        ("POST", API, {"json": {"name": "x" * 501}}, 422, "name"),
        ("POST", API, {"json": {"name": "a\u0000b"}}, 422, "name"),
        ("POST", API, {"json": {"name": 5}}, 422, "name"),
        ("POST", API, {"json": {"name": "ok", "colour": "red"}}, 422, "colour"),
        ("POST", API, {"json": {"name": "ok", "tags": {"k": 1}}}, 422, "tags.k"),
        ("POST", API, {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, None),
        ("POST", API, {"data": b""}, 400, None),
        ("GET", f"{API}/abc", {}, 400, "experiment_id"),
        ("GET", f"{API}/424242", {}, 404, "experiment_id"),
        ("GET", f"{API}/by-name", {}, 400, "name"),
        ("GET", API, {"params": {"max_results": "0"}}, 400, "max_results"),
        ("GET", API, {"params": {"max_results": "many"}}, 400, "max_results"),
        ("GET", API, {"params": {"view_type": "sideways"}}, 400, "view_type"),
        ("GET", API, {"params": {"page_token": "garbage"}}, 400, "page_token"),
    ],
)
async def test_bad_input_gets_a_clear_error_and_writes_nothing(
    client, conn, method, path, kwargs, status, field
):
    body = await call(client, method, path, status, **kwargs)
    assert set(body) == {"error"} and body["error"]["message"], "errors are JSON with a message"
    assert body["error"]["field"] == field
    assert "Traceback" not in body["error"]["message"]
    assert await conn.fetchval("SELECT count(*) FROM experiments") == 0
