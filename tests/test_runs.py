"""Runs API: create, get, update, lifecycle, nesting, tags, listing."""

from __future__ import annotations

import re

import pytest

from tests.helpers import call, new_experiment, new_run

API = "/api/v1/runs"


async def test_create_and_get(client):
    e = await new_experiment(client)
    run = await call(
        client,
        "POST",
        API,
        201,
        json={
            "experiment_id": e,
            "run_name": "baseline",
            "start_time": 1_700_000_000_000,
            "tags": {"a": "1"},
        },
    )
    info = run["info"]
    assert re.fullmatch(r"[0-9a-f]{32}", info["run_id"]), "run ids are 32 lowercase hex digits"
    assert info["experiment_id"] == e
    assert info["run_name"] == "baseline"
    assert info["status"] == "RUNNING"
    assert info["start_time"] == 1_700_000_000_000
    assert info["end_time"] is None
    assert info["lifecycle_stage"] == "active"
    assert info["artifact_uri"] == f"s3://kiseki-test/artifacts/{e}/{info['run_id']}/artifacts"
    assert run["data"] == {"params": {}, "tags": {"a": "1"}, "metrics": {}}
    assert await call(client, "GET", f"{API}/{info['run_id']}") == run
    dashed = (
        info["run_id"][:8]
        + "-"
        + info["run_id"][8:12]
        + "-"
        + info["run_id"][12:16]
        + "-"
        + info["run_id"][16:20]
    )
    dashed += "-" + info["run_id"][20:]
    assert (await call(client, "GET", f"{API}/{dashed}"))["info"]["run_id"] == info["run_id"]


async def test_default_run_name_is_readable(client):
    run = await call(client, "GET", f"{API}/{await new_run(client)}")
    assert re.fullmatch(r"[a-z]+-[a-z]+-\d+", run["info"]["run_name"])


async def test_update_status_sets_end_time(client):
    run_id = await new_run(client)
    finished = await call(client, "PATCH", f"{API}/{run_id}", json={"status": "FINISHED"})
    assert finished["info"]["status"] == "FINISHED"
    assert finished["info"]["end_time"] >= finished["info"]["start_time"]
    renamed = await call(client, "PATCH", f"{API}/{run_id}", json={"run_name": "best", "end_time": 5})
    assert renamed["info"]["run_name"] == "best"
    assert renamed["info"]["end_time"] == 5
    assert renamed["info"]["status"] == "FINISHED"
    failed = await call(client, "PATCH", f"{API}/{run_id}", json={"status": "FAILED"})
    assert failed["info"]["end_time"] == 5, "a stored end time is kept when none is given"
    resumed = await call(client, "PATCH", f"{API}/{run_id}", json={"status": "RUNNING"})
    assert resumed["info"]["status"] == "RUNNING"


async def test_nested_runs(client):
    e = await new_experiment(client)
    parent = await new_run(client, e)
    child = await call(client, "POST", API, 201, json={"experiment_id": e, "parent_run_id": parent})
    assert child["info"]["parent_run_id"] == parent
    missing = "0" * 32
    error = await call(client, "POST", API, 404, json={"experiment_id": e, "parent_run_id": missing})
    assert error["error"]["field"] == "parent_run_id"


async def test_delete_restore_and_listing(client):
    e = await new_experiment(client)
    ids = [await new_run(client, e, start_time=1000 + i) for i in range(5)]
    await call(client, "DELETE", f"{API}/{ids[0]}")
    active = await call(client, "GET", f"/api/v1/experiments/{e}/runs")
    assert [r["info"]["run_id"] for r in active["runs"]] == ids[:0:-1], "newest first, deleted runs hidden"
    deleted = await call(client, "GET", f"/api/v1/experiments/{e}/runs", params={"view_type": "deleted_only"})
    assert [r["info"]["run_id"] for r in deleted["runs"]] == [ids[0]]
    await call(client, "POST", f"{API}/{ids[0]}/restore")
    assert len((await call(client, "GET", f"/api/v1/experiments/{e}/runs"))["runs"]) == 5


async def test_listing_pages_with_equal_start_times(client):
    e = await new_experiment(client)
    ids = {await new_run(client, e, start_time=42) for _ in range(7)}
    seen: list[str] = []
    token = None
    while True:
        params = {"max_results": "2", **({"page_token": token} if token else {})}
        page = await call(client, "GET", f"/api/v1/experiments/{e}/runs", params=params)
        seen += [r["info"]["run_id"] for r in page["runs"]]
        if not (token := page["next_page_token"]):
            break
    assert sorted(seen) == sorted(ids), "every run exactly once even when start times tie"


async def test_run_tags(client):
    run_id = await new_run(client)
    await call(client, "POST", f"{API}/{run_id}/tags", json={"key": "note", "value": "a"})
    body = await call(client, "POST", f"{API}/{run_id}/tags", json={"key": "note", "value": "b"})
    assert body["data"]["tags"] == {"note": "b"}, "tags are mutable"
    body = await call(client, "DELETE", f"{API}/{run_id}/tags", params={"key": "note"})
    assert body["data"]["tags"] == {}
    await call(client, "DELETE", f"{API}/{run_id}/tags", 404, params={"key": "note"})


async def test_runs_cannot_be_created_in_a_deleted_experiment(client):
    e = await new_experiment(client)
    await call(client, "DELETE", f"/api/v1/experiments/{e}")
    assert (await call(client, "POST", API, 409, json={"experiment_id": e}))["error"][
        "field"
    ] == "experiment_id"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("GET", f"{API}/not-a-run", None, 400, "run_id"),
        ("GET", f"{API}/{'0' * 32}", None, 404, "run_id"),
        ("PATCH", f"{API}/{'0' * 32}", {"status": "FINISHED"}, 404, "run_id"),
        ("DELETE", f"{API}/{'0' * 32}", None, 404, "run_id"),
        ("POST", API, {"experiment_id": "77777"}, 404, "experiment_id"),
        ("POST", API, {"experiment_id": "x"}, 422, "experiment_id"),
        ("POST", API, {}, 422, "experiment_id"),
        ("POST", API, {"experiment_id": "1", "status": "DONE"}, 422, "status"),
        ("POST", API, {"experiment_id": "1", "start_time": -5}, 422, "start_time"),
        ("POST", API, {"experiment_id": "1", "parent_run_id": "nope"}, 422, "parent_run_id"),
    ],
)
async def test_bad_input(client, conn, method, path, body, status, field):
    await new_experiment(client)
    error = (await call(client, method, path, status, json=body))["error"]
    assert error["field"] == field
    assert await conn.fetchval("SELECT count(*) FROM runs") == 0
