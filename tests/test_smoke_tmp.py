from tests.helpers import call, new_run

async def test_smoke(client):
    run_id = await new_run(client)
    r = await call(client, "POST", f"/api/v1/runs/{run_id}/batch", json={
        "batch_id": "6f1c0c9e-6c2a-4a37-9f5c-1f0a2b3c4d5e",
        "params": [{"key": "lr", "value": "0.1"}],
        "tags": [{"key": "t", "value": "x"}],
        "metrics": [{"key": "loss", "value": 1.5, "step": 3}, {"key": "loss", "value": "NaN", "step": 4}],
        "metric_columns": {"acc": {"values": [0.1, 0.2, 0.3], "steps": [1, 2, 3]}}})
    print(r)
    r = await call(client, "GET", f"/api/v1/runs/{run_id}")
    print(r)
    r = await call(client, "GET", f"/api/v1/runs/{run_id}/metrics/history?key=loss")
    print(r)
