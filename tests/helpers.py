"""Small API helpers shared by tests."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient


async def call(client: TestClient, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
    response = await client.request(method, path, **kwargs)
    body = await response.json()
    assert response.status == status, f"{method} {path}: expected {status}, got {response.status}: {body}"
    return body


async def new_experiment(client: TestClient, name: str = "exp") -> str:
    return (await call(client, "POST", "/api/v1/experiments", 201, json={"name": name}))["experiment_id"]


async def new_run(client: TestClient, experiment_id: str | None = None, **fields: Any) -> str:
    if experiment_id is None:
        experiment_id = await new_experiment(client)
    body = await call(client, "POST", "/api/v1/runs", 201, json={"experiment_id": experiment_id, **fields})
    return body["info"]["run_id"]
