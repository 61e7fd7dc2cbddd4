"""SIGTERM, the way SLURM, Kubernetes and CI stop jobs: queued points are sent (or spooled), the run ends
KILLED, and the process still ends the way it would have without kiseki. Real subprocesses, real server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import kiseki
from kiseki import _spool
from tests.conftest import create_database, free_port
from tests.servers import kiseki_server

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import kiseki

    mode, out = sys.argv[1], Path(sys.argv[2])
    if mode == "callable":
        def previous(signum, frame):
            (out / "previous").write_text(str(signum))
            sys.exit(3)
        signal.signal(signal.SIGTERM, previous)
    elif mode == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    if mode == "away":
        client = kiseki.Client(os.environ["AWAY_URI"])  # nothing listens there; retries for 120 s
        run_id = os.environ["RUN_ID"]
        def log(i):
            client.log_metric(run_id, "m", float(i), step=i)
    else:
        kiseki.set_tracking_uri(os.environ["SERVER_URI"])
        kiseki.set_experiment(os.environ["EXPERIMENT"])
        run_id = kiseki.start_run().info.run_id
        def log(i):
            kiseki.log_metric("m", float(i), step=i)
    (out / "run_id").write_text(run_id)

    i = 0
    while not (out / "stop").exists():
        log(i)
        i += 1
        (out / "count.tmp").write_text(str(i))
        os.replace(out / "count.tmp", out / "count")  # the count file always holds a whole number
    kiseki.end_run()
    """
)


def start(mode: str, out: Path, **env: str) -> subprocess.Popen[str]:
    script = out / "job.py"
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(out)],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_points(proc: subprocess.Popen[str], out: Path, points: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"the job exited early ({proc.returncode}): {proc.stdout.read() if proc.stdout else ''}"
            )
        count = out / "count"
        if count.exists() and int(count.read_text() or 0) >= points:
            return
        time.sleep(0.05)
    pytest.fail("the job did not log enough points in time")


def stored_steps(tracking_uri: str, run_id: str) -> list[int]:
    with kiseki.Client(tracking_uri) as client:
        return [m.step for m in client.get_metric_history(run_id, "m")]


@pytest.mark.parametrize("mode", ["default", "callable"])
def test_sigterm_stores_every_point_and_ends_the_run_killed(tracking_uri, tmp_path, mode):
    proc = start(mode, tmp_path, SERVER_URI=tracking_uri, EXPERIMENT=f"sigterm-{uuid.uuid4().hex[:8]}")
    wait_for_points(proc, tmp_path, 3000)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    logged = int((tmp_path / "count").read_text())
    if mode == "default":
        assert proc.returncode == -signal.SIGTERM, (
            f"the job still dies of SIGTERM: {proc.returncode} {output}"
        )
    else:
        assert proc.returncode == 3, f"the job's own handler ran and chose the exit status: {output}"
        assert (tmp_path / "previous").read_text() == str(int(signal.SIGTERM))
    run_id = (tmp_path / "run_id").read_text()
    with kiseki.Client(tracking_uri) as client:
        run = client.get_run(run_id)
    assert run.info.status == "KILLED", output
    assert run.info.end_time is not None
    steps = stored_steps(tracking_uri, run_id)
    assert len(steps) >= logged, f"{len(steps)} stored, {logged} logged before the signal"
    assert steps == list(range(len(steps))), "every point logged, in order, none twice"


def test_an_ignored_sigterm_stays_ignored(tracking_uri, tmp_path):
    proc = start("ignore", tmp_path, SERVER_URI=tracking_uri, EXPERIMENT=f"sigign-{uuid.uuid4().hex[:8]}")
    wait_for_points(proc, tmp_path, 500)
    proc.send_signal(signal.SIGTERM)
    time.sleep(1.0)
    assert proc.poll() is None, "a job that ignores SIGTERM keeps running"
    run_id = (tmp_path / "run_id").read_text()
    with kiseki.Client(tracking_uri) as client:
        assert client.get_run(run_id).info.status == "RUNNING"
    (tmp_path / "stop").touch()
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    with kiseki.Client(tracking_uri) as client:
        assert client.get_run(run_id).info.status == "FINISHED"


def test_sigterm_with_the_server_away_spools_within_the_timeout(tracking_uri, tmp_path):
    with kiseki.Client(tracking_uri) as client:
        experiment = client.get_or_create_experiment(f"sigterm-away-{uuid.uuid4().hex[:8]}")
        run_id = client.create_run(experiment.experiment_id).info.run_id
    spool = tmp_path / "spool"
    proc = start(
        "away",
        tmp_path,
        AWAY_URI=f"http://127.0.0.1:{free_port()}",
        RUN_ID=run_id,
        KISEKI_SPOOL_DIR=str(spool),
        KISEKI_SIGTERM_FLUSH_TIMEOUT="1",
    )
    wait_for_points(proc, tmp_path, 3000)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    took = time.monotonic() - signalled
    logged = int((tmp_path / "count").read_text())
    assert proc.returncode == -signal.SIGTERM, output
    assert took < 6, f"the flush is bounded by KISEKI_SIGTERM_FLUSH_TIMEOUT=1 (took {took:.1f} s)"
    assert "the process is exiting" in output and str(spool) in output, output
    assert _spool.entries(spool), "what could not be sent is in the spool"

    sync = subprocess.run(
        [sys.executable, "-m", "kiseki", "sync", str(spool), "--tracking-uri", tracking_uri],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert sync.returncode == 0, sync.stderr
    steps = stored_steps(tracking_uri, run_id)
    assert len(steps) >= logged, f"{len(steps)} stored, {logged} logged before the signal"
    assert steps == list(range(len(steps))), "every point logged, in order, none twice"


def test_sigterm_after_the_server_went_away_keeps_points_and_status_for_kiseki_sync(
    postgres_url, template_url, tmp_path
):
    database_url = create_database(postgres_url, "kiseki_test_sigterm_away")
    port = free_port()
    args = ("--database-url", database_url, "--data-dir", str(tmp_path / "data"))
    spool = tmp_path / "spool"
    job = tmp_path / "job"
    job.mkdir()
    with kiseki_server(*args, port=port) as (url, _):
        proc = start(
            "default",
            job,
            SERVER_URI=url,
            EXPERIMENT="away",
            KISEKI_SPOOL_DIR=str(spool),
            KISEKI_SIGTERM_FLUSH_TIMEOUT="1",
        )
        wait_for_points(proc, job, 2000)
    time.sleep(1.0)  # the server is down; the job keeps logging, its sends keep retrying
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    logged = int((job / "count").read_text())
    assert proc.returncode == -signal.SIGTERM, output
    assert "for `kiseki sync`" in output, output
    with kiseki_server(*args, port=port) as (url, _):
        sync = subprocess.run(
            [sys.executable, "-m", "kiseki", "sync"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "KISEKI_SPOOL_DIR": str(spool)},
            check=False,
        )
        assert sync.returncode == 0, sync.stdout + sync.stderr
        run_id = (job / "run_id").read_text()
        with kiseki.Client(url) as client:
            run = client.get_run(run_id)
        steps = stored_steps(url, run_id)
    assert run.info.status == "KILLED", "the final status waited in the spool too"
    assert len(steps) >= logged, f"{len(steps)} stored, {logged} logged before the signal"
    assert steps == list(range(len(steps))), "every point logged, in order, none twice"


POOL_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, signal, sys
    import kiseki

    def work(uri):
        kiseki.set_tracking_uri(uri)
        kiseki.set_experiment("pool-workers")
        with kiseki.start_run():
            kiseki.log_metric("m", 1.0)
        return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    if __name__ == "__main__":
        kiseki.set_tracking_uri(sys.argv[1])
        kiseki.set_experiment("pool-parent")
        with kiseki.start_run():  # the parent has the handler, and the I/O thread runs
            kiseki.log_metric("m", 1.0)
        assert signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
        for method in ("fork", "spawn"):
            for _ in range(int(sys.argv[2]) if method == "fork" else 1):
                with multiprocessing.get_context(method).Pool(8) as pool:  # terminate() on exit
                    assert all(pool.map(work, [sys.argv[1]] * 8)), method
        print("ok")
    """
)


def test_pool_workers_keep_sigterm_default_so_terminate_never_hangs(tracking_uri, tmp_path):
    """`with Pool()` SIGTERMs its workers on exit. With a Python-level handler a worker whose main
    thread was entering its task-queue wait when the signal came would never handle it, and
    `Pool.terminate()` would wait for ever (it did, about once in 75 pools of 32); workers keep the
    default action instead. Five forked pools (and a spawned one) in a process with a live client."""
    script = tmp_path / "pools.py"
    script.write_text(POOL_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), tracking_uri, "5"], capture_output=True, text=True, timeout=100
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_the_io_thread_leaves_signals_to_the_main_thread():
    """Python runs handlers in the main thread only: kiseki's I/O thread blocks SIGTERM and SIGINT so
    the kernel never hands them to it (where they would wait while the main thread blocks in C)."""
    from kiseki._loop import shared_loop

    loop = shared_loop()
    native = loop.thread.native_id
    status = Path(f"/proc/self/task/{native}/status").read_text()
    blocked = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    for sig in (signal.SIGTERM, signal.SIGINT):
        assert blocked & (1 << (sig - 1)), f"{sig.name} is not blocked in kiseki-io"
