"""The real `kiseki` command: a server process on Postgres, and the zero-configuration embedded default."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port


def request(url: str, method: str = "GET", body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def kiseki_server(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Start `kiseki server` on a free port; yields its URL and the lines it printed."""
    port = free_port()
    command = [sys.executable, "-m", "kiseki", "server", "--port", str(port), *args]
    lines: list[str] = []
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    ) as proc:
        assert proc.stdout is not None
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("serving on" in line for line in lines):
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    pytest.fail(f"kiseki server exited with {proc.returncode}: {''.join(lines)}")
                lines.append(line)
            # Keep draining its output so the pipe never fills up and blocks the server.
            threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True).start()
            url = f"http://127.0.0.1:{port}"
            yield url, lines
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    assert proc.returncode == 0, f"kiseki server did not stop cleanly on SIGTERM: {proc.returncode}"


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


def test_db_upgrade_is_idempotent(database_url):
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "kiseki", "db", "upgrade", "--database-url", database_url],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "up to date" in out.stdout
