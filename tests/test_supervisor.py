"""`kiseki server --workers N` as a real process: a worker that dies is replaced while the others keep
serving, and one that cannot start at all ends the service with a clear message instead of a restart loop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import create_database, free_port
from tests.servers import kiseki_server


def get(url: str) -> tuple[int, bytes]:
    """A GET on a new connection; one retry, for a connection the kernel had queued on the dead worker."""
    for attempt in range(2):
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()
        except (urllib.error.URLError, ConnectionError):
            if attempt:
                raise
    raise AssertionError("unreachable")


def restarts(url: str) -> float:
    status, body = get(f"{url}/metrics")
    assert status == 200
    values = [
        s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "kiseki_worker_restarts_total"
    ]
    assert values, "the supervisor's restart count is in /metrics"
    return values[0]


def pids_of(lines: list[str]) -> list[int]:
    ready = next(line for line in lines if "serving on" in line)
    return [int(p) for p in re.search(r"pids ([\d, ]+)\)", ready)[1].split(", ")]  # type: ignore[index]


def test_a_killed_worker_is_replaced_while_the_others_serve(database_url: str, tmp_path: Path) -> None:
    flags = ("--workers", "2", "--access-log", "--log-format", "json")
    with kiseki_server("--database-url", database_url, "--data-dir", str(tmp_path), *flags) as (url, lines):
        first, second = pids_of(lines)
        assert restarts(url) == 0
        os.kill(first, signal.SIGKILL)

        deadline = time.monotonic() + 30
        replacement: int | None = None
        while replacement is None:
            assert time.monotonic() < deadline, "no replacement worker:\n" + "".join(lines)
            status, _ = get(f"{url}/healthz")
            assert status == 200, "the surviving worker keeps answering"
            for line in list(lines):
                if line.startswith("{") and "is serving again" in line:
                    replacement = int(re.search(r"\(pid (\d+)\)", json.loads(line)["message"])[1])  # type: ignore[index]
            time.sleep(0.05)
        assert replacement not in (first, second)
        assert restarts(url) == 1

        served_by: set[int] = set()
        for n in range(200):
            status, _ = get(f"{url}/healthz?n={n}")
            assert status == 200
            if n % 10 == 9:
                time.sleep(0.1)
                served_by = {
                    json.loads(x)["pid"]
                    for x in list(lines)
                    if x.startswith("{") and '"kiseki_server.access"' in x and "/healthz" in x
                }
                if {second, replacement} <= served_by:
                    break
        assert {second, replacement} <= served_by, "the replacement serves the port too"
        killed = [x for x in lines if "exited with code -9" in x]
        assert killed and "restarting it in 0.5 s" in killed[0], killed


def test_a_worker_that_cannot_start_ends_the_service(
    postgres_url: str, template_url: str, tmp_path: Path
) -> None:
    database_url = create_database(postgres_url, "kiseki_test_supervisor_gone")
    command = [sys.executable, "-m", "kiseki", "server", "--database-url", database_url]
    command += ["--data-dir", str(tmp_path), "--workers", "2", "--port", str(free_port())]
    log = tmp_path / "server.log"
    with log.open("w") as out, subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT) as parent:
        try:
            deadline = time.monotonic() + 60
            while not (match := re.search(r"pids ([\d, ]+)\)", log.read_text())):
                assert parent.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            pids = [int(p) for p in match[1].split(", ")]

            async def drop() -> None:
                admin = await asyncpg.connect(postgres_url)
                try:
                    await admin.execute("DROP DATABASE kiseki_test_supervisor_gone WITH (FORCE)")
                finally:
                    await admin.close()

            asyncio.run(drop())
            os.kill(pids[0], signal.SIGKILL)  # its replacements cannot open the dropped database
            code = parent.wait(timeout=90)
        finally:
            if parent.poll() is None:
                parent.kill()
    text = log.read_text()
    assert code == 1, text
    assert "died before it could listen 5 times in a row" in text, text
    # The killed worker's restart, then four more after start-up failures, each waiting twice as long.
    assert text.count("restarting it in") == 5, "back-off between the attempts, then the parent gives up"
    for delay in ("0.5 s", "1 s", "2 s", "4 s", "8 s"):
        assert f"restarting it in {delay}" in text
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1], 0)  # the healthy worker was stopped too
