"""Batched logging: forms, idempotency, atomicity, concurrency, validation, history reads."""

from __future__ import annotations

import asyncio
import math
import uuid

import pytest

from kiseki.models import MAX_POINTS_PER_BATCH
from kiseki_server.app import create_app
from tests.helpers import call, new_run


def batch_path(run_id: str) -> str:
    return f"/api/v1/runs/{run_id}/batch"


async def history(client, run_id: str, key: str, **params: str) -> dict:
    return await call(client, "GET", f"/api/v1/runs/{run_id}/metrics/history", params={"key": key, **params})


async def test_row_and_columnar_forms_land_together(client):
    run_id = await new_run(client)
    result = await call(
        client,
        "POST",
        batch_path(run_id),
        json={
            "batch_id": str(uuid.uuid4()),
            "params": [{"key": "lr", "value": "0.01"}, {"key": "optimizer", "value": "adam"}],
            "tags": [{"key": "phase", "value": "train"}],
            "metrics": [
                {"key": "loss", "value": 2.0, "step": 0, "timestamp": 10},
                {"key": "loss", "value": 1.0, "step": 1, "timestamp": 11},
                {"key": "acc", "value": 0.5, "step": 7, "timestamp": 12},
            ],
            "metric_columns": {"loss": {"steps": [2, 3], "values": [0.5, 0.25], "timestamps": [12, 13]}},
        },
    )
    assert result == {"applied": True, "points": 5}
    run = await call(client, "GET", f"/api/v1/runs/{run_id}")
    assert run["data"]["params"] == {"lr": "0.01", "optimizer": "adam"}
    assert run["data"]["tags"] == {"phase": "train"}
    assert run["data"]["metrics"] == {"loss": 0.25, "acc": 0.5}
    loss = await history(client, run_id, "loss")
    assert loss["steps"] == [0, 1, 2, 3]
    assert loss["values"] == [2.0, 1.0, 0.5, 0.25]
    assert loss["timestamps"] == [10, 11, 12, 13]
    assert loss["next_page_token"] is None


async def test_defaults_step_zero_and_server_timestamp(client):
    run_id = await new_run(client)
    await call(client, "POST", batch_path(run_id), json={"metric_columns": {"m": {"values": [1.0, 2.0]}}})
    body = await history(client, run_id, "m")
    assert body["steps"] == [0, 0]
    assert body["timestamps"][0] > 1_600_000_000_000, "timestamps default to the server's clock in ms"


async def test_non_finite_values_round_trip(client):
    run_id = await new_run(client)
    values = ["NaN", "Infinity", "-Infinity", 1.5]
    await call(
        client,
        "POST",
        batch_path(run_id),
        json={"metric_columns": {"m": {"values": values, "steps": [0, 1, 2, 3]}}},
    )
    # The raw JSON literals that Python's json module writes are accepted too.
    raw = b'{"metrics": [{"key": "n", "value": NaN}, {"key": "n", "value": -Infinity, "step": 1}]}'
    await call(client, "POST", batch_path(run_id), data=raw, headers={"Content-Type": "application/json"})
    assert (await history(client, run_id, "m"))["values"] == values
    assert (await history(client, run_id, "n"))["values"] == ["NaN", "-Infinity"]
    metrics = (await call(client, "GET", f"/api/v1/runs/{run_id}"))["data"]["metrics"]
    assert metrics == {"m": 1.5, "n": "-Infinity"}


async def test_latest_value_is_highest_step_not_last_logged(client):
    run_id = await new_run(client)
    for step, value in [(5, 0.5), (2, 0.2), (9, 0.9), (3, 0.3)]:
        await call(
            client, "POST", batch_path(run_id), json={"metrics": [{"key": "m", "value": value, "step": step}]}
        )
    assert (await call(client, "GET", f"/api/v1/runs/{run_id}"))["data"]["metrics"] == {"m": 0.9}
    assert (await history(client, run_id, "m"))["steps"] == [2, 3, 5, 9], "history is ordered by step"


async def test_int64_extremes_round_trip(client):
    run_id = await new_run(client)
    steps = [-(2**63), 2**63 - 1, 0, -1]
    stamps = [0, 2**63 - 1, 5, 2**62]
    await call(
        client,
        "POST",
        batch_path(run_id),
        json={
            "metric_columns": {"m": {"values": [1.0, 2.0, 3.0, 4.0], "steps": steps, "timestamps": stamps}}
        },
    )
    body = await history(client, run_id, "m")
    assert list(zip(body["steps"], body["timestamps"], strict=True)) == sorted(
        zip(steps, stamps, strict=True)
    )


async def test_same_batch_id_is_applied_once(client, conn):
    run_id = await new_run(client)
    batch = {
        "batch_id": str(uuid.uuid4()),
        "params": [{"key": "p", "value": "1"}],
        "metric_columns": {"m": {"values": [1.0, 2.0, 3.0], "steps": [1, 2, 3]}},
    }
    first = await call(client, "POST", batch_path(run_id), json=batch)
    again = await call(client, "POST", batch_path(run_id), json=batch)
    assert first == {"applied": True, "points": 3}
    assert again == {"applied": False, "points": 3}, "a retried batch is acknowledged, not an error"
    assert (await history(client, run_id, "m"))["steps"] == [1, 2, 3], "no duplicate points"
    assert await conn.fetchval("SELECT count(*) FROM metric_chunks") == 1


async def test_concurrent_retries_of_one_batch_apply_once(client):
    run_id = await new_run(client)
    batch = {"batch_id": str(uuid.uuid4()), "metric_columns": {"m": {"values": [1.0] * 100}}}
    results = await asyncio.gather(*(call(client, "POST", batch_path(run_id), json=batch) for _ in range(10)))
    assert sum(r["applied"] for r in results) == 1
    assert len((await history(client, run_id, "m"))["values"]) == 100


async def test_param_logged_again_with_same_value_is_a_no_op(client):
    run_id = await new_run(client)
    for _ in range(2):
        await call(client, "POST", batch_path(run_id), json={"params": [{"key": "lr", "value": "0.1"}]})
    assert (await call(client, "GET", f"/api/v1/runs/{run_id}"))["data"]["params"] == {"lr": "0.1"}


async def test_changed_param_is_409_and_the_whole_batch_is_rolled_back(client, conn):
    run_id = await new_run(client)
    await call(client, "POST", batch_path(run_id), json={"params": [{"key": "lr", "value": "0.1"}]})
    batch_id = str(uuid.uuid4())
    error = await call(
        client,
        "POST",
        batch_path(run_id),
        409,
        json={
            "batch_id": batch_id,
            "params": [{"key": "a_new_one", "value": "x"}, {"key": "lr", "value": "0.2"}],
            "tags": [{"key": "t", "value": "v"}],
            "metrics": [{"key": "m", "value": 1.0}],
        },
    )
    assert error["error"]["field"] == "params.lr"
    assert "'0.1'" in error["error"]["message"]
    assert "'0.2'" in error["error"]["message"]
    run = await call(client, "GET", f"/api/v1/runs/{run_id}")
    assert run["data"] == {"params": {"lr": "0.1"}, "tags": {}, "metrics": {}}, "nothing of the batch is kept"
    assert await conn.fetchval("SELECT count(*) FROM metric_chunks") == 0
    assert await conn.fetchval("SELECT count(*) FROM applied_batches WHERE batch_id = $1", batch_id) == 0, (
        "a failed batch must not be marked applied, or a corrected retry would be skipped"
    )


async def test_twenty_concurrent_batches_on_one_run(client, conn):
    run_id = await new_run(client)
    keys = [f"k{i}" for i in range(8)]

    def batch(i: int) -> dict:
        # Every batch touches every key (in a different order) plus its own param and a shared tag.
        order = keys[i % 8 :] + keys[: i % 8]
        return {
            "batch_id": str(uuid.uuid4()),
            "params": [{"key": f"p{i}", "value": str(i)}],
            "tags": [{"key": "shared", "value": str(i)}],
            "metric_columns": {
                k: {"steps": list(range(i * 100, i * 100 + 100)), "values": [float(i)] * 100} for k in order
            },
        }

    results = await asyncio.gather(
        *(call(client, "POST", batch_path(run_id), json=batch(i)) for i in range(20))
    )
    assert all(r["applied"] for r in results)
    for key in keys:
        body = await history(client, run_id, key)
        assert body["steps"] == list(range(2000)), f"{key}: every point exactly once"
    run = await call(client, "GET", f"/api/v1/runs/{run_id}")
    assert run["data"]["metrics"] == dict.fromkeys(keys, 19.0)
    assert len(run["data"]["params"]) == 20
    assert await conn.fetchval("SELECT count(*) FROM applied_batches") == 20


async def test_ten_thousand_points_in_row_and_columnar_forms(client):
    run_id = await new_run(client)
    rows = [{"key": f"r{i % 10}", "value": i / 3, "step": i // 10} for i in range(10_000)]
    columns = {
        f"c{k}": {"values": [k + i / 7 for i in range(1000)], "steps": list(range(1000))} for k in range(10)
    }
    result = await call(client, "POST", batch_path(run_id), json={"metrics": rows, "metric_columns": columns})
    assert result["points"] == 20_000
    body = await history(client, run_id, "r3")
    assert body["values"] == [i / 3 for i in range(3, 10_000, 10)], "float64 values are exact"
    assert (await history(client, run_id, "c9"))["values"][-1] == 9 + 999 / 7


async def test_history_pages_are_exact_with_duplicate_steps(client):
    run_id = await new_run(client)
    # Points at equal (step, timestamp) across several batches: pages must split them without loss.
    for b in range(4):
        await call(
            client,
            "POST",
            batch_path(run_id),
            json={
                "metric_columns": {
                    "m": {
                        "values": [b * 10 + i for i in range(10)],
                        "steps": [1] * 5 + [2] * 5,
                        "timestamps": [7] * 10,
                    }
                }
            },
        )
    pages, token = [], None
    while True:
        body = await history(client, run_id, "m", max_results="3", **({"page_token": token} if token else {}))
        pages.append(body["values"])
        if not (token := body["next_page_token"]):
            break
    got = [v for page in pages for v in page]
    expected = [b * 10 + i for b in range(4) for i in range(5)] + [
        b * 10 + i for b in range(4) for i in range(5, 10)
    ]
    assert got == expected, "step order, then arrival order; every point exactly once"
    assert all(len(p) <= 3 for p in pages)


async def test_history_page_token_survives_new_points(client):
    run_id = await new_run(client)
    await call(
        client,
        "POST",
        batch_path(run_id),
        json={"metric_columns": {"m": {"values": [0, 1, 2, 3], "steps": [0, 1, 2, 3]}}},
    )
    first = await history(client, run_id, "m", max_results="2")
    await call(
        client, "POST", batch_path(run_id), json={"metric_columns": {"m": {"values": [9], "steps": [0]}}}
    )
    second = await history(client, run_id, "m", max_results="10", page_token=first["next_page_token"])
    assert first["steps"] + second["steps"] == [0, 1, 2, 3], "a point logged behind the cursor is not re-read"


async def test_downsampled_keeps_shape(client):
    run_id = await new_run(client)
    n = 50_000
    values = [math.sin(i / 1000) for i in range(n)]
    values[31_337] = 100.0  # a spike must survive downsampling
    await call(
        client,
        "POST",
        batch_path(run_id),
        json={"metric_columns": {"m": {"values": values, "steps": list(range(n))}}},
    )
    body = await call(
        client, "GET", f"/api/v1/runs/{run_id}/metrics/downsampled", params={"key": "m", "max_points": "500"}
    )
    assert len(body["steps"]) <= 500
    assert body["steps"][0] == 0
    assert body["steps"][-1] == n - 1
    assert body["steps"] == sorted(body["steps"])
    assert 100.0 in body["values"]
    assert min(body["values"]) == min(values)


async def test_unknown_key_is_empty_and_unknown_run_is_404(client):
    run_id = await new_run(client)
    assert (await history(client, run_id, "nothing"))["steps"] == []
    assert await call(client, "GET", f"/api/v1/runs/{'0' * 32}/metrics/history", 404, params={"key": "m"})


async def test_logging_to_a_deleted_run_is_409(client):
    run_id = await new_run(client)
    await call(client, "DELETE", f"/api/v1/runs/{run_id}")
    error = await call(client, "POST", batch_path(run_id), 409, json={"metrics": [{"key": "m", "value": 1}]})
    assert error["error"]["field"] == "run_id"


async def test_body_over_the_limit_is_413(aiohttp_client, settings, conn):
    client = await aiohttp_client(create_app(settings.model_copy(update={"max_request_bytes": 10_000})))
    run_id = await new_run(client)
    error = await call(
        client, "POST", batch_path(run_id), 413, json={"metric_columns": {"m": {"values": [0.5] * 5000}}}
    )
    assert "10000" in error["error"]["message"]
    assert await conn.fetchval("SELECT count(*) FROM metric_chunks") == 0


_BIG = {"metric_columns": {"m": {"values": [0.0] * (MAX_POINTS_PER_BATCH + 1)}}}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"metrics": [{"key": "m", "value": "high"}]}, 422, "metrics.0.value"),
        ({"metrics": [{"key": "m"}]}, 422, "metrics.0.value"),
        ({"metrics": [{"key": "", "value": 1}]}, 422, "metrics.0.key"),
        ({"metrics": [{"key": "k" * 251, "value": 1}]}, 422, "metrics.0.key"),
        ({"metrics": [{"key": "a\u0000", "value": 1}]}, 422, "metrics.0.key"),
        ({"metrics": [{"key": "m", "value": 1, "step": 2**63}]}, 422, "metrics.0.step"),
        ({"metrics": [{"key": "m", "value": 1, "step": 1.5}]}, 422, "metrics.0.step"),
        ({"metrics": [{"key": "m", "value": 1, "timestamp": -1}]}, 422, "metrics.0.timestamp"),
        ({"metrics": [{"key": "ok", "value": 1}, {"key": "m", "value": [1]}]}, 422, "metrics.1.value"),
        ({"metric_columns": {"m": {"values": [1, 2], "steps": [1]}}}, 422, "metric_columns.m"),
        ({"metric_columns": {"m": {"values": [1], "timestamps": [1, 2]}}}, 422, "metric_columns.m"),
        ({"metric_columns": {"m": {"values": [1], "colour": [1]}}}, 422, "metric_columns.m.colour"),
        (_BIG, 422, None),
        ({"params": [{"key": "p", "value": 5}]}, 422, "params.0.value"),
        ({"params": [{"key": "p", "value": "x" * 6001}]}, 422, "params.0.value"),
        ({"params": [{"key": "p", "value": "1"}, {"key": "p", "value": "2"}]}, 422, "params"),
        ({"tags": [{"key": "t", "value": "x" * 8001}]}, 422, "tags.0.value"),
        ({"batch_id": "not-a-uuid"}, 422, "batch_id"),
        ({"metrics": {"key": "m"}}, 422, "metrics"),
        ([1, 2, 3], 422, None),
    ],
)
async def test_invalid_batches_are_rejected_whole(client, conn, body, status, field):
    run_id = await new_run(client)
    error = (await call(client, "POST", batch_path(run_id), status, json=body))["error"]
    assert error["field"] == field
    assert error["message"]
    counts = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM metric_chunks) AS chunks, (SELECT count(*) FROM params) AS params,"
        " (SELECT count(*) FROM tags) AS tags, (SELECT count(*) FROM latest_metrics) AS latest"
    )
    assert dict(counts) == {"chunks": 0, "params": 0, "tags": 0, "latest": 0}


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"{", "not valid JSON"), (b"", "empty"), (b"\xff\xfe", "not valid JSON")],
)
async def test_malformed_bodies_are_400(client, data, message):
    run_id = await new_run(client)
    error = await call(
        client, "POST", batch_path(run_id), 400, data=data, headers={"Content-Type": "application/json"}
    )
    assert message in error["error"]["message"]


async def test_batch_for_unknown_run_is_404(client):
    error = await call(
        client, "POST", batch_path("f" * 32), 404, json={"metrics": [{"key": "m", "value": 1}]}
    )
    assert error["error"]["field"] == "run_id"
