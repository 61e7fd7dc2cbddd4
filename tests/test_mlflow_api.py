"""MLflow's tracking REST API as kiseki serves it, request by request (in-process app, real Postgres):
the shapes, codes and semantics MLflow's clients rely on."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

API = "/api/2.0/mlflow"


async def mlflow_call(client: TestClient, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = await client.request(method, f"{API}/{path}", **kwargs)
    body = await response.json()
    assert response.status == status, f"{method} {path}: expected {status}, got {response.status}: {body}"
    return body


async def new_experiment(client: TestClient, name: str = "exp") -> str:
    body = await mlflow_call(client, "POST", "experiments/create", json={"name": name})
    assert isinstance(body["experiment_id"], str)
    return body["experiment_id"]


async def new_run(client: TestClient, experiment_id: str, **fields: Any) -> dict[str, Any]:
    body = await mlflow_call(
        client, "POST", "runs/create", json={"experiment_id": experiment_id, "start_time": 1000, **fields}
    )
    return body["run"]


async def test_experiment_lifecycle(client: TestClient) -> None:
    experiment_id = await new_experiment(client, "lifecycle")
    got = await mlflow_call(client, "GET", "experiments/get", params={"experiment_id": experiment_id})
    assert got["experiment"]["name"] == "lifecycle"
    assert got["experiment"]["lifecycle_stage"] == "active"
    by_name = await mlflow_call(
        client, "GET", "experiments/get-by-name", params={"experiment_name": "lifecycle"}
    )
    assert by_name == got
    await mlflow_call(
        client, "POST", "experiments/update", json={"experiment_id": experiment_id, "new_name": "renamed"}
    )
    await mlflow_call(
        client,
        "POST",
        "experiments/set-experiment-tag",
        json={"experiment_id": experiment_id, "key": "k", "value": "v"},
    )
    got = await mlflow_call(client, "GET", "experiments/get", params={"experiment_id": experiment_id})
    assert got["experiment"]["name"] == "renamed"
    assert got["experiment"]["tags"] == [{"key": "k", "value": "v"}]
    await mlflow_call(
        client, "POST", "experiments/delete-experiment-tag", json={"experiment_id": experiment_id, "key": "k"}
    )
    await mlflow_call(client, "POST", "experiments/delete", json={"experiment_id": experiment_id})
    active = await mlflow_call(client, "POST", "experiments/search", json={"max_results": 10})
    assert experiment_id not in [e["experiment_id"] for e in active["experiments"]]
    deleted = await mlflow_call(client, "POST", "experiments/search", json={"view_type": "DELETED_ONLY"})
    assert [e["experiment_id"] for e in deleted["experiments"]] == [experiment_id]
    await mlflow_call(client, "POST", "experiments/restore", json={"experiment_id": experiment_id})
    got = await mlflow_call(client, "GET", "experiments/get", params={"experiment_id": experiment_id})
    assert got["experiment"]["tags"] == [] and got["experiment"]["lifecycle_stage"] == "active"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        ("GET", "experiments/get", {"params": {"experiment_id": "987654"}}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("GET", "experiments/get", {"params": {"experiment_id": "abc"}}, 400, "INVALID_PARAMETER_VALUE"),
        (
            "GET",
            "experiments/get-by-name",
            {"params": {"experiment_name": "nope"}},
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        ("POST", "experiments/create", {"json": {}}, 400, "INVALID_PARAMETER_VALUE"),
        (
            "POST",
            "experiments/create",
            {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        ("GET", "runs/get", {"params": {"run_id": "0" * 32}}, 404, "RESOURCE_DOES_NOT_EXIST"),
        ("GET", "runs/get", {"params": {"run_id": "not-a-run"}}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "runs/search", {"json": {"filter": "metrics.x >"}}, 400, "INVALID_PARAMETER_VALUE"),
        ("POST", "registered-models/create", {"json": {"name": "m"}}, 404, "ENDPOINT_NOT_FOUND"),
        ("GET", "traces/abc/info", {}, 404, "ENDPOINT_NOT_FOUND"),
    ],
)
async def test_errors_have_mlflow_shape(
    client: TestClient, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    body = await mlflow_call(client, method, path, status, **kwargs)
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == code, body


async def test_taken_name_is_resource_already_exists(client: TestClient) -> None:
    await new_experiment(client, "taken")
    body = await mlflow_call(client, "POST", "experiments/create", 400, json={"name": "taken"})
    assert body["error_code"] == "RESOURCE_ALREADY_EXISTS"


async def test_default_experiment_zero(client: TestClient) -> None:
    """MLflow's client logs to experiment "0" when none is set: kiseki's experiment named Default."""
    run = await new_run(client, "0")
    default = await mlflow_call(client, "GET", "experiments/get", params={"experiment_id": "0"})
    assert default["experiment"]["name"] == "Default"
    assert run["info"]["experiment_id"] == default["experiment"]["experiment_id"]
    again = await new_run(client, "0")
    assert again["info"]["experiment_id"] == run["info"]["experiment_id"], "one Default, not one per call"
    found = await mlflow_call(client, "POST", "runs/search", json={"experiment_ids": ["0"]})
    assert {r["info"]["run_id"] for r in found["runs"]} == {run["info"]["run_id"], again["info"]["run_id"]}


async def test_run_info_is_identical_from_create_get_and_search(client: TestClient) -> None:
    experiment_id = await new_experiment(client)
    created = await new_run(
        client,
        experiment_id,
        run_name="alpha",
        user_id="ada",
        tags=[{"key": "team", "value": "nlp"}, {"key": "mlflow.source.type", "value": "LOCAL"}],
    )
    info = created["info"]
    assert info["run_id"] == info["run_uuid"] and len(info["run_id"]) == 32
    assert info["run_name"] == "alpha" and info["user_id"] == "ada" and info["status"] == "RUNNING"
    assert "end_time" not in info
    got = await mlflow_call(client, "GET", "runs/get", params={"run_id": info["run_id"]})
    found = await mlflow_call(client, "POST", "runs/search", json={"experiment_ids": [experiment_id]})
    assert got["run"]["info"] == info == found["runs"][0]["info"]
    tags = {t["key"]: t["value"] for t in got["run"]["data"]["tags"]}
    assert tags == {
        "team": "nlp",
        "mlflow.source.type": "LOCAL",
        "mlflow.user": "ada",
        "mlflow.runName": "alpha",
    }
    updated = await mlflow_call(
        client, "POST", "runs/update", json={"run_id": info["run_id"], "status": "FINISHED", "end_time": 5000}
    )
    assert updated["run_info"]["status"] == "FINISHED" and updated["run_info"]["end_time"] == 5000


async def test_system_tags_map_to_run_name_and_parent(client: TestClient) -> None:
    experiment_id = await new_experiment(client)
    parent = (await new_run(client, experiment_id, tags=[{"key": "mlflow.runName", "value": "p"}]))["info"]
    assert parent["run_name"] == "p"
    child = await new_run(
        client, experiment_id, tags=[{"key": "mlflow.parentRunId", "value": parent["run_id"]}]
    )
    child_id = child["info"]["run_id"]
    native = await client.get(f"/api/v1/runs/{child_id}")
    assert (await native.json())["info"]["parent_run_id"] == parent["run_id"]
    await mlflow_call(
        client, "POST", "runs/set-tag", json={"run_id": child_id, "key": "mlflow.runName", "value": "kid"}
    )
    native = await (await client.get(f"/api/v1/runs/{child_id}")).json()
    assert native["info"]["run_name"] == "kid" and "mlflow.runName" not in native["data"]["tags"]
    for flt in [f"tags.mlflow.parentRunId = '{parent['run_id']}'", "tags.`mlflow.runName` = 'kid'"]:
        found = await mlflow_call(
            client, "POST", "runs/search", json={"experiment_ids": [experiment_id], "filter": flt}
        )
        assert [r["info"]["run_id"] for r in found["runs"]] == [child_id], flt


async def test_log_metric_param_tag_and_latest_metrics(client: TestClient) -> None:
    run_id = (await new_run(client, await new_experiment(client)))["info"]["run_id"]
    for step, value in [(0, 1.0), (2, "NaN"), (1, 0.5)]:
        await mlflow_call(
            client,
            "POST",
            "runs/log-metric",
            json={
                "run_id": run_id,
                "run_uuid": run_id,
                "key": "loss",
                "value": value,
                "timestamp": 10 + step,
                "step": step,
            },
        )
    await mlflow_call(
        client,
        "POST",
        "runs/log-metric",
        json={"run_id": run_id, "key": "up", "value": "Infinity", "timestamp": "7", "step": "3"},
    )
    await mlflow_call(
        client, "POST", "runs/log-parameter", json={"run_id": run_id, "key": "lr", "value": "0.1"}
    )
    await mlflow_call(client, "POST", "runs/set-tag", json={"run_id": run_id, "key": "t", "value": "x"})
    run = (await mlflow_call(client, "GET", "runs/get", params={"run_id": run_id}))["run"]
    assert run["data"]["metrics"] == [
        {"key": "loss", "value": "NaN", "timestamp": 12, "step": 2},
        {"key": "up", "value": "Infinity", "timestamp": 7, "step": 3},
    ]
    assert run["data"]["params"] == [{"key": "lr", "value": "0.1"}]
    changed = await mlflow_call(
        client, "POST", "runs/log-parameter", 400, json={"run_id": run_id, "key": "lr", "value": "0.2"}
    )
    assert changed["error_code"] == "INVALID_PARAMETER_VALUE" and "lr" in changed["message"]
    await mlflow_call(client, "POST", "runs/delete-tag", json={"run_id": run_id, "key": "t"})
    missing = await mlflow_call(client, "POST", "runs/delete-tag", 404, json={"run_id": run_id, "key": "t"})
    assert missing["error_code"] == "RESOURCE_DOES_NOT_EXIST"


async def test_log_batch_is_all_or_nothing(client: TestClient) -> None:
    run_id = (await new_run(client, await new_experiment(client)))["info"]["run_id"]
    metrics = [{"key": f"m{i % 10}", "value": i, "timestamp": 100 + i, "step": i} for i in range(1000)]
    params = [{"key": f"p{i}", "value": str(i)} for i in range(100)]
    tags = [{"key": f"t{i}", "value": str(i)} for i in range(99)] + [
        {"key": "mlflow.runName", "value": "batched"}
    ]
    await mlflow_call(
        client,
        "POST",
        "runs/log-batch",
        json={"run_id": run_id, "metrics": metrics, "params": params, "tags": tags},
    )
    run = (await mlflow_call(client, "GET", "runs/get", params={"run_id": run_id}))["run"]
    assert len(run["data"]["metrics"]) == 10 and len(run["data"]["params"]) == 100
    assert run["info"]["run_name"] == "batched"
    assert {"key": "m9", "value": 999, "timestamp": 1099, "step": 999} in run["data"]["metrics"]
    bad = {
        "run_id": run_id,
        "metrics": [{"key": "new", "value": 1, "timestamp": 1, "step": 0}],
        "params": [{"key": "p1", "value": "changed"}],
    }
    await mlflow_call(client, "POST", "runs/log-batch", 400, json=bad)
    history = await mlflow_call(
        client, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "new"}
    )
    assert history == {"metrics": []}, "a refused batch writes nothing"


async def test_metric_history_pages(client: TestClient) -> None:
    run_id = (await new_run(client, await new_experiment(client)))["info"]["run_id"]
    metrics = [{"key": "loss", "value": 1 / (i + 1), "timestamp": 1000 + i, "step": i} for i in range(250)]
    metrics[7]["value"] = "-Infinity"
    await mlflow_call(client, "POST", "runs/log-batch", json={"run_id": run_id, "metrics": metrics})
    whole = await mlflow_call(
        client, "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": "loss"}
    )
    assert len(whole["metrics"]) == 250 and "next_page_token" not in whole
    assert whole["metrics"][7] == {"key": "loss", "value": "-Infinity", "timestamp": 1007, "step": 7}
    pages, token = [], None
    while True:
        params = {"run_id": run_id, "metric_key": "loss", "max_results": "100"}
        if token:
            params["page_token"] = token
        page = await mlflow_call(client, "GET", "metrics/get-history", params=params)
        pages.append(len(page["metrics"]))
        token = page.get("next_page_token")
        if not token:
            break
    assert pages == [100, 100, 50], "pages honour max_results and the last one has no token"


async def test_search_runs_filter_order_and_pages(client: TestClient) -> None:
    experiment_id = await new_experiment(client)
    for i in range(5):
        run_id = (await new_run(client, experiment_id, run_name=f"r{i}"))["info"]["run_id"]
        await mlflow_call(
            client,
            "POST",
            "runs/log-batch",
            json={
                "run_id": run_id,
                "metrics": [{"key": "acc", "value": i / 10, "timestamp": 1, "step": 0}],
                "params": [{"key": "model", "value": "bert" if i % 2 else "gpt"}],
            },
        )
        if i == 4:
            await mlflow_call(client, "POST", "runs/update", json={"run_id": run_id, "status": "FINISHED"})
    body = {
        "experiment_ids": [experiment_id],
        "filter": "params.model = 'bert' and metrics.acc > 0",
        "order_by": ["metrics.acc DESC"],
    }
    found = await mlflow_call(client, "POST", "runs/search", json=body)
    assert [r["info"]["run_name"] for r in found["runs"]] == ["r3", "r1"]
    finished = await mlflow_call(
        client,
        "POST",
        "runs/search",
        json={"experiment_ids": [experiment_id], "filter": "attributes.status = 'FINISHED'"},
    )
    assert [r["info"]["run_name"] for r in finished["runs"]] == ["r4"]
    names, token = [], None
    while True:
        page = await mlflow_call(
            client,
            "POST",
            "runs/search",
            json={
                "experiment_ids": [experiment_id],
                "max_results": 2,
                "order_by": ["attributes.run_name ASC"],
                **({"page_token": token} if token else {}),
            },
        )
        names += [r["info"]["run_name"] for r in page["runs"]]
        token = page.get("next_page_token")
        if not token:
            break
    assert names == ["r0", "r1", "r2", "r3", "r4"]


async def test_delete_restore_run(client: TestClient) -> None:
    experiment_id = await new_experiment(client)
    run_id = (await new_run(client, experiment_id))["info"]["run_id"]
    await mlflow_call(client, "POST", "runs/delete", json={"run_id": run_id})
    refused = await mlflow_call(
        client,
        "POST",
        "runs/log-metric",
        400,
        json={"run_id": run_id, "key": "x", "value": 1, "timestamp": 1},
    )
    assert refused["error_code"] == "INVALID_PARAMETER_VALUE"
    deleted = await mlflow_call(
        client,
        "POST",
        "runs/search",
        json={"experiment_ids": [experiment_id], "run_view_type": "DELETED_ONLY"},
    )
    assert [r["info"]["lifecycle_stage"] for r in deleted["runs"]] == ["deleted"]
    await mlflow_call(client, "POST", "runs/restore", json={"run_id": run_id})
    active = await mlflow_call(client, "POST", "runs/search", json={"experiment_ids": [experiment_id]})
    assert [r["info"]["run_id"] for r in active["runs"]] == [run_id]


async def test_log_inputs_are_returned_with_the_run(client: TestClient) -> None:
    run_id = (await new_run(client, await new_experiment(client)))["info"]["run_id"]
    dataset = {
        "name": "mnist",
        "digest": "abc123",
        "source_type": "local",
        "source": '{"uri": "/data"}',
        "schema": '{"mlflow_colspec": []}',
    }
    body = {
        "run_id": run_id,
        "datasets": [{"tags": [{"key": "mlflow.data.context", "value": "train"}], "dataset": dataset}],
    }
    await mlflow_call(client, "POST", "runs/log-inputs", json=body)
    body["datasets"][0]["tags"][0]["value"] = "eval"
    await mlflow_call(client, "POST", "runs/log-inputs", json=body)
    run = (await mlflow_call(client, "GET", "runs/get", params={"run_id": run_id}))["run"]
    assert run["inputs"]["dataset_inputs"] == [
        {"tags": [{"key": "mlflow.data.context", "value": "eval"}], "dataset": dataset}
    ], "logging a dataset again updates its input tags, it is not listed twice"
    page = await client.get(f"/runs/{run_id}")
    html = await page.text()
    assert page.status == 200 and 'id="datasets"' in html, "the run page should show the run's datasets"
    assert "mnist" in html and "abc123" in html and "mlflow.data.context = eval" in html


async def test_get_requests_take_repeated_query_parameters(client: TestClient) -> None:
    for name in ("b-exp", "a-exp"):
        await new_experiment(client, name)
    params = [("order_by", "name ASC"), ("max_results", "1")]
    first = await mlflow_call(client, "GET", "experiments/search", params=params)
    assert [e["name"] for e in first["experiments"]] == ["a-exp"] and first["next_page_token"]


async def test_ajax_alias_server_info_and_logged_models(client: TestClient) -> None:
    experiment_id = await new_experiment(client, "ajax")
    response = await client.get(
        "/ajax-api/2.0/mlflow/experiments/get", params={"experiment_id": experiment_id}
    )
    assert (await response.json())["experiment"]["name"] == "ajax"
    info = await (await client.get("/api/3.0/mlflow/server-info")).json()
    assert info["artifact_serving_enabled"] is True
    models = await mlflow_call(
        client, "POST", "logged-models/search", json={"experiment_ids": [experiment_id]}
    )
    assert models == {"models": []}


async def test_log_model_history_tag(client: TestClient) -> None:
    """MLflow 2.x clients record logged models in a run tag, as MLflow's server keeps them."""
    run_id = (await new_run(client, await new_experiment(client)))["info"]["run_id"]
    for path in ("model", "other"):
        body = {"run_id": run_id, "model_json": f'{{"artifact_path": "{path}", "flavors": {{}}}}'}
        await mlflow_call(client, "POST", "runs/log-model", json=body)
    run = (await mlflow_call(client, "GET", "runs/get", params={"run_id": run_id}))["run"]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert json.loads(tags["mlflow.log-model.history"]) == [
        {"artifact_path": "model", "flavors": {}},
        {"artifact_path": "other", "flavors": {}},
    ]


def test_nan_strings_are_what_mlflow_parses() -> None:
    """The MLflow client's own JSON parser reads kiseki's spelling of non-finite values."""
    from mlflow.protos.service_pb2 import Metric
    from mlflow.utils.proto_json_utils import parse_dict

    for text, check in [
        ("NaN", math.isnan),
        ("Infinity", lambda v: v == math.inf),
        ("-Infinity", lambda v: v == -math.inf),
    ]:
        metric = Metric()
        parse_dict({"key": "k", "value": text, "timestamp": 1, "step": 0}, metric)
        assert check(metric.value), text
