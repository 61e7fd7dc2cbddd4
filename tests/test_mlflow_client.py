"""The unmodified `mlflow` client (fluent API and MlflowClient) against a real `kiseki server`, and what
it logs visible through kiseki's own SDK (and the other way round)."""

from __future__ import annotations

import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

import kiseki
from kiseki import fluent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(tracking_uri: str) -> Iterator[MlflowClient]:
    """mlflow pointed at the shared kiseki server, with no run left active afterwards."""
    mlflow.set_tracking_uri(tracking_uri)
    kiseki.set_tracking_uri(tracking_uri)
    yield MlflowClient()
    while mlflow.active_run():
        mlflow.end_run()
    while kiseki.active_run():
        kiseki.end_run()
    fluent._experiment_id = None
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


def test_fluent_flow_and_kiseki_sees_it(client: MlflowClient) -> None:
    experiment = mlflow.set_experiment(unique("flow"))
    with mlflow.start_run(run_name="parent") as parent:
        mlflow.log_param("lr", 0.001)
        mlflow.log_params({"epochs": 3, "optimizer": "adam"})
        for step in range(20):
            mlflow.log_metric("loss", 1 / (step + 1), step=step)
        mlflow.log_metrics({"acc": 0.75, "f1": 0.5}, step=19)
        mlflow.set_tag("team", "vision")
        mlflow.set_tags({"a": "1", "b": "2"})
        with mlflow.start_run(run_name="child", nested=True) as child:
            mlflow.log_metric("x", 1.0)
    run = client.get_run(parent.info.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "parent"
    assert run.data.params == {"lr": "0.001", "epochs": "3", "optimizer": "adam"}
    assert run.data.metrics == {"loss": 0.05, "acc": 0.75, "f1": 0.5}
    assert run.data.tags["team"] == "vision" and run.data.tags["mlflow.runName"] == "parent"
    history = client.get_metric_history(parent.info.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(s, 1 / (s + 1)) for s in range(20)]
    assert client.get_run(child.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id

    native = kiseki.Client().get_run(parent.info.run_id)
    assert native.info.experiment_id == experiment.experiment_id
    assert native.data.params["optimizer"] == "adam" and native.data.metrics["acc"] == 0.75
    assert kiseki.Client().get_run(child.info.run_id).info.parent_run_id == parent.info.run_id
    assert [m.value for m in kiseki.Client().get_metric_history(parent.info.run_id, "loss")][:2] == [1.0, 0.5]


def test_the_run_browser_shows_what_mlflow_logged(client: MlflowClient, tracking_uri: str) -> None:
    mlflow.set_experiment(unique("browse"))
    with mlflow.start_run(run_name="shown-in-browser") as run:
        mlflow.log_param("optimizer", "adam")
        for step in range(5):
            mlflow.log_metric("loss", 1 / (step + 1), step=step)
    with urllib.request.urlopen(f"{tracking_uri}/runs/{run.info.run_id}") as page:
        html = page.read().decode()
    assert "shown-in-browser" in html and "adam" in html, "the run page should show the MLflow run"
    assert 'class="chart' in html and "loss" in html, "the run page should chart the metric MLflow logged"


def test_resume_run_by_id(client: MlflowClient) -> None:
    mlflow.set_experiment(unique("resume"))
    with mlflow.start_run() as first:
        mlflow.log_metric("m", 1, step=0)
    with mlflow.start_run(run_id=first.info.run_id):
        mlflow.log_metric("m", 2, step=1)
    assert [m.value for m in client.get_metric_history(first.info.run_id, "m")] == [1, 2]
    assert client.get_run(first.info.run_id).info.status == "FINISHED"


def test_default_experiment(client: MlflowClient) -> None:
    with mlflow.start_run() as run:  # no experiment set: MLflow's "0"
        mlflow.log_param("p", "v")
    assert client.get_experiment(run.info.experiment_id).name == "Default"
    assert client.get_experiment("0").name == "Default"


def test_client_log_batch_and_lookups(client: MlflowClient) -> None:
    name = unique("batch")
    experiment_id = client.create_experiment(name, tags={"owner": "me"})
    assert client.get_experiment_by_name(name).experiment_id == experiment_id
    assert client.get_experiment_by_name(unique("missing")) is None
    run = client.create_run(experiment_id, run_name="b")
    metrics = [Metric("loss", float(i), 1_700_000_000_000 + i, i) for i in range(2500)]
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param("k", "v")], tags=[RunTag("t", "x")])
    client.set_terminated(run.info.run_id)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2500
    with pytest.raises(MlflowException) as refused:
        client.log_param(run.info.run_id, "k", "other")
    assert refused.value.error_code == "INVALID_PARAMETER_VALUE"
    found = client.search_experiments(filter_string=f"name = '{name}'")
    assert [e.experiment_id for e in found] == [experiment_id] and found[0].tags == {"owner": "me"}
    client.rename_experiment(experiment_id, name + "-renamed")
    client.delete_experiment(experiment_id)
    assert client.get_experiment(experiment_id).lifecycle_stage == "deleted"
    client.restore_experiment(experiment_id)
    assert client.get_experiment_by_name(name + "-renamed").experiment_id == experiment_id
    with pytest.raises(MlflowException) as taken:
        client.create_experiment(name + "-renamed")
    assert taken.value.error_code == "RESOURCE_ALREADY_EXISTS"


def test_async_logging(client: MlflowClient) -> None:
    mlflow.set_experiment(unique("async"))
    with mlflow.start_run() as run:
        for step in range(200):
            mlflow.log_metric("loss", step / 10, step=step, synchronous=False)
        mlflow.log_param("p", 1, synchronous=False)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 200
    assert client.get_run(run.info.run_id).data.params == {"p": "1"}


def test_search_runs_dataframe(client: MlflowClient) -> None:
    experiment = mlflow.set_experiment(unique("search"))
    for i in range(6):
        with mlflow.start_run(run_name=f"r{i}"):
            mlflow.log_metric("acc", i / 10)
            mlflow.log_param("model", "bert" if i % 2 else "gpt")
    df = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string="params.model = 'bert' AND metrics.acc >= 0.3",
        order_by=["metrics.acc DESC"],
    )
    assert list(df["tags.mlflow.runName"]) == ["r5", "r3"]
    assert list(df["metrics.acc"]) == [0.5, 0.3] and list(df["params.model"]) == ["bert", "bert"]
    by_name = mlflow.search_runs(
        experiment_names=[experiment.name], filter_string="attributes.run_name = 'r0'"
    )
    assert len(by_name) == 1
    runs = client.search_runs([experiment.experiment_id], max_results=4, order_by=["attributes.run_name ASC"])
    assert [r.info.run_name for r in runs] == ["r0", "r1", "r2", "r3"] and runs.token
    rest = client.search_runs(
        [experiment.experiment_id], max_results=4, order_by=["attributes.run_name ASC"], page_token=runs.token
    )
    assert [r.info.run_name for r in rest] == ["r4", "r5"] and not rest.token
    client.delete_run(runs[0].info.run_id)
    assert len(mlflow.search_runs([experiment.experiment_id])) == 5
    client.restore_run(runs[0].info.run_id)
    assert len(mlflow.search_runs([experiment.experiment_id])) == 6


def test_artifacts_both_ways(client: MlflowClient, tmp_path: Path) -> None:
    mlflow.set_experiment(unique("artifacts"))
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(3000))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(src / "a.txt"))
        mlflow.log_artifacts(str(src), artifact_path="tree")
        mlflow.log_text("hi", "notes/hello.txt")
    run_id = run.info.run_id
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    top = client.list_artifacts(run_id)
    assert [(f.path, f.is_dir, f.file_size) for f in top] == [
        ("a.txt", False, 5),
        ("notes", True, None),
        ("tree", True, None),
    ]
    assert [f.path for f in client.list_artifacts(run_id, "tree/sub")] == ["tree/sub/b.bin"]
    for dst in ("out", "back"):
        (tmp_path / dst).mkdir()  # MLflow 2.x wants the destination to exist
    out = Path(client.download_artifacts(run_id, "tree", str(tmp_path / "out")))
    assert (out / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/notes/hello.txt") == "hi"
    native = {f.path for f in kiseki.Client().list_artifacts(run_id, "tree")}
    assert native == {"tree/a.txt", "tree/sub"}

    # The other way: kiseki's SDK logs, mlflow reads.
    kiseki.set_experiment(unique("from-kiseki"))
    with kiseki.start_run(run_name="native") as native_run:
        kiseki.log_param("p", "q")
        kiseki.log_metric("m", 0.5, step=3)
        kiseki.log_artifact(src / "a.txt", "k")
    seen = client.get_run(native_run.info.run_id)
    assert (
        seen.info.run_name == "native" and seen.data.params == {"p": "q"} and seen.data.metrics == {"m": 0.5}
    )
    assert [(m.step, m.value) for m in client.get_metric_history(native_run.info.run_id, "m")] == [(3, 0.5)]
    assert [f.path for f in client.list_artifacts(native_run.info.run_id, "k")] == ["k/a.txt"]
    got = Path(client.download_artifacts(native_run.info.run_id, "k/a.txt", str(tmp_path / "back")))
    assert got.read_text() == "alpha"


def test_dataset_inputs(client: MlflowClient) -> None:
    import pandas as pd

    mlflow.set_experiment(unique("datasets"))
    dataset = mlflow.data.from_pandas(pd.DataFrame({"x": [1, 2, 3], "y": [0, 1, 0]}), name="toy")
    with mlflow.start_run() as run:
        mlflow.log_input(dataset, context="training")
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("toy", dataset.digest)]
    assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}


def test_empty_run_lists_no_artifacts(client: MlflowClient) -> None:
    mlflow.set_experiment(unique("empty"))
    with mlflow.start_run() as run:
        pass
    assert client.list_artifacts(run.info.run_id) == []
    assert client.list_artifacts(run.info.run_id, "missing") == []


def test_unsupported_features_fail_clearly(client: MlflowClient) -> None:
    with pytest.raises(MlflowException) as refused:
        client.create_registered_model(unique("model"))
    assert "model registry" in refused.value.message
