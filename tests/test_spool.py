"""Never discard: batches the server did not take within the retry budget go to the spool folder, and
`kiseki sync` (or a later flush of a client for that server) sends them, each applied exactly once."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import kiseki
from kiseki import _spool
from tests.conftest import free_port


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def kiseki_sync(*args: str, spool: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiseki", "sync", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KISEKI_SPOOL_DIR": str(spool)},
        check=False,
    )


def new_run(tracking_uri: str) -> str:
    with kiseki.Client(tracking_uri) as client:
        experiment = client.get_or_create_experiment(unique("spool"))
        return client.create_run(experiment.experiment_id).info.run_id


def test_unreachable_server_spools_then_kiseki_sync_stores_everything_once(tracking_uri, tmp_path, caplog):
    spool = tmp_path / "spool"
    run_id = new_run(tracking_uri)
    away = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = kiseki.Client(away, retry_timeout=0.3, max_batch_points=1000, spool_dir=spool)
    for step in range(2500):
        client.log_metric(run_id, "loss", step / 10, step=step)
    client.log_param(run_id, "lr", 0.1)
    client.set_tag(run_id, "stage", "dev")
    with caplog.at_level(logging.WARNING, logger="kiseki"):
        client.flush()  # no error: nothing is lost, it is on disk
    client.close()

    folder = _spool.server_folder(spool, away)
    entries = sorted(folder.glob("*.json"))
    assert len(entries) == 4, "params+tags, then 3 metric batches of at most 1000 points"
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert str(folder) in warning, f"the warning names the spool folder: {warning}"
    saved_counts = re.findall(r"Saved ([\d,]+) points, (\d+) params and (\d+) tags", warning)
    assert [sum(int(c[i].replace(",", "")) for c in saved_counts) for i in range(3)] == [2500, 1, 1], warning
    assert "kiseki sync" in warning
    saved = json.loads(entries[0].read_text())
    assert saved["run_id"] == run_id and saved["tracking_uri"] == away
    assert uuid.UUID(saved["body"]["batch_id"])
    assert not list(folder.glob(".tmp-*")), "no temporary files are left behind"

    backup = tmp_path / "backup"
    shutil.copytree(spool, backup)

    done = kiseki_sync("--tracking-uri", tracking_uri, spool=spool)
    assert done.returncode == 0, done.stderr
    assert "sent 4 of 4 spooled batches (2,500 points, 1 params and 1 tags)" in done.stdout
    assert not list(folder.glob("*.json")), "entries are deleted once the server acknowledged them"

    again = kiseki_sync("--tracking-uri", tracking_uri, spool=spool)
    assert again.returncode == 0 and "nothing to send" in again.stdout

    # Re-sending the very same batches (a copy, as if a deletion had been lost) stores nothing twice.
    replay = kiseki_sync(str(backup), "--tracking-uri", tracking_uri, spool=spool)
    assert replay.returncode == 0, replay.stderr
    assert "4 had been stored before" in replay.stdout

    with kiseki.Client(tracking_uri) as check:
        steps = [m.step for m in check.get_metric_history(run_id, "loss")]
        run = check.get_run(run_id)
    assert steps == list(range(2500)), f"{len(steps)} points stored; each must be stored once"
    assert run.data.params == {"lr": "0.1"}
    assert run.data.tags["stage"] == "dev"


def test_a_later_flush_of_a_client_for_that_server_sends_the_spool(tracking_uri, tmp_path):
    spool = tmp_path / "spool"
    run_id = new_run(tracking_uri)
    earlier = _spool.Spool(tracking_uri, spool)  # what a job that lost the server left behind
    for start in (0, 100):
        earlier.write(
            run_id,
            {
                "batch_id": str(uuid.uuid4()),
                "metric_columns": {"m": {"values": [1.0] * 100, "steps": list(range(start, start + 100))}},
            },
        )
    (earlier.folder / ".tmp-torn").write_bytes(b'{"format": "kiseki-spo')  # a crash mid-write: ignored
    with kiseki.Client(tracking_uri, spool_dir=spool) as client:
        client.log_metric(run_id, "m", 2.0, step=200)
        client.flush()
        assert not earlier.entries(), "the flush sent the spooled batches and deleted them"
        assert [m.step for m in client.get_metric_history(run_id, "m")] == list(range(201))
    assert (earlier.folder / ".tmp-torn").exists()


def test_a_batch_the_server_refuses_is_set_aside_and_reported(tracking_uri, tmp_path):
    spool = tmp_path / "spool"
    run_id = new_run(tracking_uri)
    folder = _spool.Spool(tracking_uri, spool)
    missing_run = folder.write(
        "0" * 32, {"batch_id": str(uuid.uuid4()), "params": [{"key": "a", "value": "1"}]}
    )
    good = folder.write(run_id, {"batch_id": str(uuid.uuid4()), "params": [{"key": "b", "value": "2"}]})
    garbage = folder.folder / "9999999999999-garbage.json"
    garbage.write_text("not json")

    done = kiseki_sync(spool=spool)
    assert done.returncode == 1, "a refused batch makes sync fail"
    assert "sent 1 of 3" in done.stdout
    rejected = folder.folder / "rejected"
    assert (rejected / missing_run.name).exists() and (rejected / garbage.name).exists()
    assert "404" in (rejected / f"{missing_run.name}.error").read_text()
    assert f"refused, set aside at {rejected / missing_run.name}" in done.stderr
    assert not good.exists()

    again = kiseki_sync(spool=spool)
    assert again.returncode == 0 and "nothing to send" in again.stdout, "refused batches are not retried"
    with kiseki.Client(tracking_uri) as check:
        assert check.get_run(run_id).data.params == {"b": "2"}


def test_sync_keeps_everything_while_the_server_is_away(tmp_path):
    spool = tmp_path / "spool"
    away = f"http://127.0.0.1:{free_port()}"
    entry = _spool.Spool(away, spool).write("a" * 32, {"batch_id": str(uuid.uuid4()), "tags": []})
    done = kiseki_sync(spool=spool)
    assert done.returncode == 1
    assert "1 batches stay" in done.stderr and away in done.stderr
    assert entry.exists()


@pytest.mark.parametrize("env", [{"KISEKI_SPOOL_DIR": "/x/y"}, {"XDG_CACHE_HOME": "/c"}, {}])
def test_spool_folder_defaults(monkeypatch, env):
    for name in ("KISEKI_SPOOL_DIR", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = {
        "KISEKI_SPOOL_DIR": Path("/x/y"),
        "XDG_CACHE_HOME": Path("/c/kiseki/spool"),
    }.get(next(iter(env), ""), Path.home() / ".cache" / "kiseki" / "spool")
    assert _spool.default_dir() == expected
    one, other = _spool.server_folder(expected, "http://h:1"), _spool.server_folder(expected, "http://h:2")
    assert one != other and one.name.startswith("h_1-")
