"""The SDK end to end against a real `kiseki server` process: fluent API, clients, batching, retries."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
import uuid

import pytest

import kiseki
from kiseki import fluent
from tests.conftest import create_database, free_port
from tests.servers import kiseki_server


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def sdk(tracking_uri: str):
    """The fluent API pointed at the shared server, with no run left active afterwards."""
    kiseki.set_tracking_uri(tracking_uri)
    yield kiseki
    while kiseki.active_run():
        kiseki.end_run()
    fluent._experiment_id = None


def test_fluent_flow(sdk):
    experiment = sdk.set_experiment(unique("flow"))
    with sdk.start_run(run_name="baseline", tags={"team": "vision"}) as run:
        assert sdk.active_run() is run
        sdk.log_param("lr", 0.001)
        sdk.log_params({"epochs": 3, "optimizer": "adam"})
        for step in range(100):
            sdk.log_metric("loss", 1 / (step + 1), step=step)
        sdk.log_metrics({"acc": 0.9, "f1": 0.8}, step=99)
        sdk.set_tag("stage", "dev")
        sdk.set_tags({"a": 1})
    assert sdk.active_run() is None
    stored = sdk.get_run(run.info.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.end_time is not None
    assert stored.info.experiment_id == experiment.experiment_id
    assert stored.info.run_name == "baseline"
    assert stored.data.params == {"lr": "0.001", "epochs": "3", "optimizer": "adam"}
    assert stored.data.metrics == {"loss": 0.01, "acc": 0.9, "f1": 0.8}
    assert stored.data.tags == {"team": "vision", "stage": "dev", "a": "1"}
    history = sdk.Client().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == list(range(100))
    assert history[0].key == "loss"
    assert history[0].value == 1.0


def test_run_status_follows_the_with_block(sdk):
    sdk.set_experiment(unique("status"))

    def fail() -> None:
        with sdk.start_run() as run:
            sdk.log_metric("m", 1.0)
            run_ids.append(run.info.run_id)
            raise ZeroDivisionError

    def interrupt() -> None:
        with sdk.start_run() as run:
            run_ids.append(run.info.run_id)
            raise KeyboardInterrupt

    run_ids: list[str] = []
    with pytest.raises(ZeroDivisionError):
        fail()
    with pytest.raises(KeyboardInterrupt):
        interrupt()
    failed, killed = run_ids
    client = sdk.Client()
    assert client.get_run(failed).info.status == "FAILED"
    assert client.get_run(failed).data.metrics == {"m": 1.0}, "points logged before the error are kept"
    assert client.get_run(killed).info.status == "KILLED"


def test_nested_runs_and_resume(sdk):
    sdk.set_experiment(unique("nested"))
    with sdk.start_run() as parent:
        with pytest.raises(RuntimeError, match="nested=True"):
            sdk.start_run()
        with sdk.start_run(nested=True) as child:
            sdk.log_metric("child_metric", 1)
        assert sdk.active_run() is parent
    assert sdk.get_run(child.info.run_id).info.parent_run_id == parent.info.run_id

    with sdk.start_run(run_id=parent.info.run_id) as resumed:
        assert resumed.info.status == "RUNNING"
        sdk.log_metric("later", 2.0, step=5)
    again = sdk.get_run(parent.info.run_id)
    assert again.info.status == "FINISHED"
    assert again.data.metrics == {"later": 2.0}


def test_changed_param_surfaces_at_end_run_and_nothing_else_is_lost(sdk):
    sdk.set_experiment(unique("params"))
    client = sdk.Client()
    run = client.create_run(sdk.set_experiment(unique("p")).experiment_id)
    client.log_param(run.info.run_id, "lr", "0.1")
    client.flush()
    client.log_param(run.info.run_id, "lr", "0.2")  # accepted locally: the server knows the old value
    for step in range(10):
        client.log_metric(run.info.run_id, "m", step, step=step)
    with pytest.raises(kiseki.Conflict, match="lr"):
        client.flush(run.info.run_id)
    stored = client.get_run(run.info.run_id)
    assert stored.data.params == {"lr": "0.1"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "m")] == list(range(10)), (
        "a rejected param must not take the batch's metric points with it"
    )
    client.log_param(run.info.run_id, "x", "1")
    with pytest.raises(kiseki.Conflict, match="immutable"):
        client.log_param(run.info.run_id, "x", "2")


def test_data_the_server_refuses_fails_the_run_and_raises_at_its_end(sdk):
    sdk.set_experiment(unique("refused"))
    other = sdk.Client()

    def run_block() -> None:
        with sdk.start_run() as run:
            run_ids.append(run.info.run_id)
            other.log_batch(run.info.run_id, params=[kiseki.Param(key="lr", value="0.1")])
            sdk.log_param("lr", "0.2")  # queued; the server already holds another value
            sdk.log_metric("m", 1.0)

    run_ids: list[str] = []
    with pytest.raises(kiseki.Conflict, match="lr"):
        run_block()
    stored = other.get_run(run_ids[0])
    assert stored.info.status == "FAILED", "a run whose data was refused does not end FINISHED"
    assert stored.info.end_time is not None
    assert stored.data.metrics == {"m": 1.0}
    assert sdk.active_run() is None


def test_typed_errors(sdk, tracking_uri):
    client = sdk.Client()
    name = unique("typed")
    client.create_experiment(name)
    with pytest.raises(kiseki.Conflict):
        client.create_experiment(name)
    with pytest.raises(kiseki.NotFound):
        client.get_run("0" * 32)
    assert client.get_experiment_by_name(unique("missing")) is None
    with pytest.raises(kiseki.InvalidInput) as info:
        client.create_experiment("x" * 600)
    assert info.value.field == "name"


def test_unreachable_server_error_names_the_url_and_the_fix():
    url = f"http://127.0.0.1:{free_port()}"
    client = kiseki.Client(url, retry_timeout=0.5)
    with pytest.raises(kiseki.ServerUnavailable) as info:
        client.get_experiment("1")
    assert url in str(info.value)
    assert "kiseki server" in str(info.value)
    client.close()


def _log_from_process(args: tuple[str, str, int]) -> str:
    tracking_uri, experiment, points = args
    kiseki.set_tracking_uri(tracking_uri)
    kiseki.set_experiment(experiment)
    with kiseki.start_run() as run:
        for step in range(points):
            kiseki.log_metric("loss", step * 0.5, step=step)
    return run.info.run_id


def test_32_processes_each_log_20000_points_exactly_once(sdk, tracking_uri):
    experiment = unique("parallel")
    # fork (Linux's default) from this multi-threaded process, as a training script's Pool does; on
    # exit the pool SIGTERMs its workers (test_sdk_sigterm.py has why that must not hang).
    with multiprocessing.get_context("fork").Pool(32) as pool:
        run_ids = pool.map(_log_from_process, [(tracking_uri, experiment, 20_000)] * 32)
    assert len(set(run_ids)) == 32
    client = sdk.Client()
    for run_id in run_ids:
        steps = [m.step for m in client.get_metric_history(run_id, "loss")]
        assert steps == list(range(20_000)), f"run {run_id}: {len(steps)} points"


def test_server_restart_mid_run_loses_and_duplicates_nothing(postgres_url, template_url, tmp_path):
    database_url = create_database(postgres_url, "kiseki_test_restart")
    port = free_port()
    args = ("--database-url", database_url, "--data-dir", str(tmp_path))
    stop = threading.Event()
    logged = 0
    with kiseki_server(*args, port=port) as (url, _):
        client = kiseki.Client(url, flush_interval=0.05, retry_timeout=60)
        run_id = client.create_run(client.create_experiment(unique("restart"))).info.run_id

        def log() -> None:
            nonlocal logged
            while not stop.is_set():
                client.log_metric(run_id, "m", float(logged), step=logged)
                logged += 1
                if logged % 100 == 0:
                    time.sleep(0.01)

        writer = threading.Thread(target=log)
        writer.start()
        time.sleep(1.0)
    # The server is down now (stopped with SIGTERM); the writer keeps logging for a few seconds.
    time.sleep(3.0)
    with kiseki_server(*args, port=port):
        time.sleep(1.0)
        stop.set()
        writer.join()
        client.flush()
        steps = [m.step for m in client.get_metric_history(run_id, "m")]
        client.close()
    assert logged > 1000
    assert steps == list(range(logged)), f"{len(steps)} stored of {logged} logged"


async def test_async_client_logging_from_many_tasks(tracking_uri):
    async with kiseki.AsyncClient(tracking_uri) as client:
        experiment = await client.get_or_create_experiment(unique("async"))
        run = await client.create_run(experiment.experiment_id)

        async def task(i: int) -> None:
            for step in range(500):
                await client.log_metric(run.info.run_id, f"task_{i % 5}", float(i), step=i * 500 + step)
                if step % 100 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*(task(i) for i in range(40)))
        await client.log_param(run.info.run_id, "tasks", 40)
        await client.flush()
        for k in range(5):
            history = await client.get_metric_history(run.info.run_id, f"task_{k}")
            assert len(history) == 8 * 500
        stored = await client.get_run(run.info.run_id)
        assert stored.data.params == {"tasks": "40"}


def test_search_runs_as_dataframe_and_list(sdk):
    pd = pytest.importorskip("pandas")
    sdk.set_experiment(unique("search"))
    for i in range(3):
        with sdk.start_run(run_name=f"r{i}"):
            sdk.log_param("i", i)
            sdk.log_metric("acc", i / 10)
    frame = sdk.search_runs(filter_string="metrics.acc > 0.05", order_by=["metrics.acc DESC"])
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["run_name"]) == ["r2", "r1"]
    assert list(frame["params.i"]) == ["2", "1"]
    assert list(frame["metrics.acc"]) == [0.2, 0.1]
    assert str(frame["start_time"].dtype).startswith("datetime64")
    runs = sdk.search_runs(output_format="list")
    assert {r.info.run_name for r in runs} == {"r0", "r1", "r2"}
