"""The real `kiseki` command: a server process on Postgres, and the zero-configuration embedded default."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.conftest import empty_database
from tests.servers import kiseki_server


def request(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def test_server_on_a_postgres_url(database_url):
    with kiseki_server("--database-url", database_url) as (url, _):
        experiment = request(f"{url}/api/v1/experiments", "POST", {"name": "cli"})
        run = request(f"{url}/api/v1/runs", "POST", {"experiment_id": experiment["experiment_id"]})
        run_id = run["info"]["run_id"]
        body = {"batch_id": "0f8fad5b-d9cb-469f-a165-70867728950e", "metrics": [{"key": "m", "value": 1}]}
        assert request(f"{url}/api/v1/runs/{run_id}/batch", "POST", body)["applied"] is True
        assert request(f"{url}/api/v1/runs/{run_id}")["data"]["metrics"] == {"m": 1.0}


def test_zero_configuration_server_uses_an_embedded_postgres_and_keeps_data():
    data_dir = Path(tempfile.mkdtemp(prefix="kiseki-cli-", dir="/tmp"))
    env = {"KISEKI_DATA_DIR": str(data_dir), "KISEKI_DATABASE_URL": ""}
    with kiseki_server(env=env) as (url, lines):
        printed = "".join(lines)
        assert str(data_dir) in printed, f"the data folder is printed at start-up: {printed}"
        assert "serving on http://127.0.0.1" in printed
        experiment = request(f"{url}/api/v1/experiments", "POST", {"name": "persisted"})
        assert experiment["artifact_location"].startswith(f"file://{data_dir}")
    with kiseki_server(env=env) as (url, _):
        again = request(f"{url}/api/v1/experiments/by-name?name=persisted")
        assert again["experiment_id"] == experiment["experiment_id"], "a restart reuses the data folder"


def test_db_upgrade_migrates_once_and_is_then_idempotent(postgres_url):
    database_url = empty_database(postgres_url, "kiseki_test_cli_upgrade")
    outputs = [
        subprocess.run(
            [sys.executable, "-m", "kiseki", "db", "upgrade", "--database-url", database_url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for _ in range(2)
    ]
    assert "applied 0001_initial.sql" in outputs[0], outputs[0]
    assert "up to date" in outputs[1]
    assert "applied" not in outputs[1], "a second upgrade must not apply anything"
