"""The fluent API (`kiseki.start_run()`, `kiseki.log_metric(...)`), shaped like MLflow's so habits carry
over. State is per process: the active experiment, a stack of active runs, and one `Client`."""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from time import time_ns
from types import TracebackType
from typing import Any, Literal

from kiseki import _sigterm, _spool, config
from kiseki._input import Number
from kiseki.client import Client
from kiseki.config import get_tracking_uri
from kiseki.errors import ServerUnavailable
from kiseki.models import Experiment, Run, RunData, RunInfo, RunStatus, ViewType

DEFAULT_EXPERIMENT = "Default"

_lock = threading.RLock()
_client: Client | None = None
_client_uri: str | None = None
_experiment_id: str | None = None
_runs: list[ActiveRun] = []
_crashed = False


class ActiveRun:
    """The run `start_run` began: `.info` and `.data` like a `Run`; a context manager that ends it
    FINISHED, or FAILED when the block raises (KILLED on KeyboardInterrupt)."""

    def __init__(self, run: Run) -> None:
        self._run = run
        self.run_id = run.info.run_id
        self._owner_pid = os.getpid()

    @property
    def info(self) -> RunInfo:
        return self._run.info

    @property
    def data(self) -> RunData:
        """Params, tags and latest metrics as of when the run was started or resumed."""
        return self._run.data

    def __enter__(self) -> ActiveRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            status = RunStatus.FINISHED
        elif issubclass(exc_type, KeyboardInterrupt):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
        with _lock:
            active = self in _runs
        if active:
            _end(self, status, raise_errors=exc_type is None)

    def __repr__(self) -> str:
        return f"<ActiveRun run_id={self.info.run_id} name={self.info.run_name!r}>"


def _get_client() -> Client:
    """The process's client, made anew when `set_tracking_uri` changed the target (the environment is read
    when a client is made)."""
    global _client, _client_uri
    client = _client
    if client is not None and _client_uri is config._tracking_uri:
        return client
    with _lock:
        if _client is None or _client_uri is not config._tracking_uri:
            client = Client(get_tracking_uri(), first_contact_timeout=config.get_first_contact_timeout())
            _client, _client_uri = client, config._tracking_uri
        return _client


def set_experiment(experiment_name: str | None = None, experiment_id: str | None = None) -> Experiment:
    """Make an experiment the active one (created if missing; safe when many jobs start at once)."""
    global _experiment_id
    if (experiment_name is None) == (experiment_id is None):
        raise ValueError("give exactly one of experiment_name and experiment_id")
    client = _get_client()
    if experiment_name is not None:
        experiment = client.get_or_create_experiment(experiment_name)
    else:
        assert experiment_id is not None
        experiment = client.get_experiment(experiment_id)
        if experiment.lifecycle_stage != "active":
            raise ValueError(f"experiment {experiment_id} is deleted; restore it or pick another")
    _experiment_id = experiment.experiment_id
    return experiment


def _chosen_experiment() -> tuple[str | None, str]:
    """(id, name) of the active experiment as chosen: set_experiment's id, else KISEKI_EXPERIMENT_ID; when
    there is no id, the name in KISEKI_EXPERIMENT_NAME, else "Default"."""
    chosen = _experiment_id if _experiment_id is not None else os.environ.get("KISEKI_EXPERIMENT_ID") or None
    return chosen, os.environ.get("KISEKI_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)


def _active_experiment_id() -> str:
    """The active experiment, created when missing: a run needs an experiment."""
    experiment_id, name = _chosen_experiment()
    return experiment_id or _get_client().get_or_create_experiment(name).experiment_id


def _existing_experiment_id() -> str | None:
    """The active experiment for reads, which never create anything: None when it does not exist."""
    experiment_id, name = _chosen_experiment()
    if experiment_id is not None:
        return experiment_id
    experiment = _get_client().get_experiment_by_name(name)
    return experiment.experiment_id if experiment is not None else None


def start_run(
    run_id: str | None = None,
    experiment_id: str | None = None,
    run_name: str | None = None,
    nested: bool = False,
    tags: Mapping[str, str] | None = None,
) -> ActiveRun:
    """Start a run in the active experiment (or resume `run_id`) and make it the active run."""
    _watch_for_crashes()
    client = _get_client()
    with _lock:
        if _runs and not nested:
            raise RuntimeError(
                f"run {_runs[-1].info.run_id} is already active; end it first, or pass nested=True to start "
                "a child run"
            )
        parent = _runs[-1].info.run_id if _runs else None
    if run_id is not None:
        client.get_run(run_id)  # NotFound for a bad id, before changing anything
        run = client.update_run(run_id, status=RunStatus.RUNNING)
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, value)
    else:
        run = client.create_run(
            experiment_id or _active_experiment_id(), run_name=run_name, tags=tags, parent_run_id=parent
        )
    active = ActiveRun(run)
    with _lock:
        _runs.append(active)
    return active


def active_run() -> ActiveRun | None:
    with _lock:
        return _runs[-1] if _runs else None


def last_active_run() -> ActiveRun | None:
    return active_run()


def end_run(status: RunStatus | str = RunStatus.FINISHED) -> None:
    """End the active run: send its queued data, then record `status` and the end time."""
    with _lock:
        run = _runs[-1] if _runs else None
    if run is not None:
        _end(run, RunStatus(status), raise_errors=True)


def _end(run: ActiveRun, status: RunStatus, *, raise_errors: bool) -> None:
    with _lock:
        if run in _runs:
            _runs.remove(run)
    client = _get_client()
    run_id = run.info.run_id
    try:
        client.flush(run_id)
    except Exception:
        # The run still gets its final status; the data error is raised once that is recorded.
        failed = RunStatus.FAILED if status == RunStatus.FINISHED else status
        client.update_run(run_id, status=failed, end_time=time_ns() // 1_000_000)
        if raise_errors:
            raise
        return
    client.update_run(run_id, status=status, end_time=time_ns() // 1_000_000)


def _run_id() -> str:
    """The active run's id, starting a run first when there is none (as MLflow does)."""
    runs = _runs
    if runs:
        return runs[-1].run_id
    return start_run().run_id


def log_param(key: str, value: object) -> None:
    """Queue a param; the value is str()-ed (as MLflow does). A bad key or value raises `InvalidInput`."""
    client = _get_client()
    client._batcher.add_param(_run_id(), key, value, wait=True)


def log_params(params: Mapping[str, object]) -> None:
    """Queue several params: all of them, or (when one is bad) none."""
    client = _get_client()
    client._batcher.add_params(_run_id(), params, wait=True)


def log_metric(key: str, value: Number, step: Number | None = None, timestamp: Number | None = None) -> None:
    """Queue one metric point; returns at once (batched in the background). The value may be any real
    number (numpy/torch scalars and 0-d arrays too), step and timestamp whole numbers; bad input raises
    `InvalidInput` (a ValueError) here, naming the key, and nothing else logged is affected."""
    client = _client if _client is not None and _client_uri is config._tracking_uri else _get_client()
    runs = _runs
    run_id = runs[-1].run_id if runs else _run_id()
    client._batcher.add_metric(run_id, key, value, step, timestamp, wait=True)


def log_metrics(
    metrics: Mapping[str, Number], step: Number | None = None, timestamp: Number | None = None
) -> None:
    """Queue several points of one step: all of them, or (when one is bad) none."""
    client = _get_client()
    client._batcher.add_metrics(_run_id(), metrics, step, timestamp, wait=True)


def set_tag(key: str, value: object) -> None:
    """Queue a tag; the value is str()-ed. A bad key or value raises `InvalidInput`."""
    client = _get_client()
    client._batcher.add_tag(_run_id(), key, value, wait=True)


def set_tags(tags: Mapping[str, object]) -> None:
    """Queue several tags: all of them, or (when one is bad) none."""
    client = _get_client()
    client._batcher.add_tags(_run_id(), tags, wait=True)


def log_artifact(local_path: str | Path, artifact_path: str | None = None) -> None:
    """Upload a file to the active run's artifacts (under `artifact_path` when given)."""
    _get_client().log_artifact(_run_id(), local_path, artifact_path)


def log_artifacts(local_dir: str | Path, artifact_path: str | None = None) -> None:
    """Upload a folder's files to the active run's artifacts, keeping their layout."""
    _get_client().log_artifacts(_run_id(), local_dir, artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    """Save `text` as the artifact `artifact_file` (e.g. "notes/summary.txt")."""
    _log_bytes(text.encode("utf-8"), artifact_file)


def log_dict(dictionary: Mapping[str, Any], artifact_file: str) -> None:
    """Save a dict as JSON (or YAML when `artifact_file` ends in .yaml/.yml and PyYAML is installed)."""
    if artifact_file.endswith((".yaml", ".yml")):
        import yaml  # type: ignore[import-untyped,unused-ignore]

        data = yaml.safe_dump(dict(dictionary), sort_keys=False).encode("utf-8")
    else:
        data = json.dumps(dictionary, indent=2, default=str).encode("utf-8")
    _log_bytes(data, artifact_file)


def _log_bytes(data: bytes, artifact_file: str) -> None:
    folder, _, name = artifact_file.strip("/").rpartition("/")
    with tempfile.TemporaryDirectory(prefix="kiseki-") as tmp:
        local = Path(tmp) / name
        local.write_bytes(data)
        _get_client().log_artifact(_run_id(), local, folder or None)


def download_artifacts(run_id: str, artifact_path: str = "", dst_path: str | Path | None = None) -> str:
    """Download a run's artifact file or folder; returns the local path."""
    return _get_client().download_artifacts(run_id, artifact_path, dst_path)


def flush() -> None:
    """Wait until everything logged so far is stored."""
    _get_client().flush()


def get_experiment_by_name(name: str) -> Experiment | None:
    return _get_client().get_experiment_by_name(name)


def get_run(run_id: str) -> Run:
    return _get_client().get_run(run_id)


def search_runs(
    experiment_ids: Sequence[str] | None = None,
    filter_string: str = "",
    run_view_type: ViewType = ViewType.ACTIVE_ONLY,
    max_results: int = 100_000,
    order_by: Sequence[str] | None = None,
    output_format: Literal["pandas", "list"] = "pandas",
    experiment_names: Sequence[str] | None = None,
) -> Any:
    """Runs matching `filter_string` (see docs/search.md), as a pandas DataFrame when pandas is installed
    (`kiseki[pandas]`) and `output_format="pandas"`, else as a list of `Run`. Without ids or names it
    searches the active experiment (none yet: no runs; a search never creates an experiment)."""
    client = _get_client()
    ids = list(experiment_ids or [])
    for name in experiment_names or []:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise ValueError(f"no active experiment named {name!r}")
        ids.append(experiment.experiment_id)
    if not ids and (active := _existing_experiment_id()) is not None:
        ids = [active]
    runs: list[Run] = []
    token: str | None = None
    while ids and len(runs) < max_results:
        page = client.search_runs(
            ids, filter_string, run_view_type, min(50_000, max_results - len(runs)), order_by, token
        )
        runs += page
        if not (token := page.token):
            break
    if output_format == "list":
        return runs
    try:
        from kiseki.frames import runs_to_frame
    except ImportError:
        return runs
    return runs_to_frame(runs)


def _watch_for_crashes() -> None:
    """Remember an uncaught exception, so runs left open at exit end FAILED rather than FINISHED."""
    if getattr(sys.excepthook, "_kiseki", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        global _crashed
        _crashed = True
        previous(exc_type, exc, tb)

    hook._kiseki = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _kill_runs_on_sigterm(deadline: float) -> None:
    """End this process's active runs KILLED (their data was flushed by the step before this one)."""
    with _lock:
        runs = [run for run in reversed(_runs) if run._owner_pid == os.getpid()]
        for run in runs:
            _runs.remove(run)  # so the exit hook does not end them again, FINISHED
    client = _client
    if not runs or client is None:
        return
    end_time = time_ns() // 1_000_000
    ending = {"status": RunStatus.KILLED.value, "end_time": end_time}

    async def kill_all() -> list[Any]:
        updates = (
            client._core.update_run(r.run_id, status=RunStatus.KILLED, end_time=end_time) for r in runs
        )
        return await asyncio.gather(*updates, return_exceptions=True)

    try:
        outcomes: list[Any] = client._io.run(kill_all(), timeout=max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        outcomes = [TimeoutError("no answer in time")] * len(runs)
    for run, outcome in zip(runs, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, ServerUnavailable | TimeoutError):
                print(f"kiseki: could not end run {run.run_id} KILLED: {outcome}", file=sys.stderr)
                continue
            # The server is away: keep the final status with the run's spooled data, for `kiseki sync`.
            path = client._core._spool.write(run.run_id, ending, kind=_spool.RUN_UPDATE)
            print(
                f"kiseki: could not end run {run.run_id} KILLED ({outcome}); saved that to {path} "
                "for `kiseki sync`",
                file=sys.stderr,
            )


_sigterm.on_sigterm(_kill_runs_on_sigterm)


@atexit.register
def _end_runs_at_exit() -> None:
    status = RunStatus.FAILED if _crashed else RunStatus.FINISHED
    for run in reversed(list(_runs)):
        if run._owner_pid == os.getpid():
            try:
                _end(run, status, raise_errors=False)
            except Exception as exc:  # an exit hook must not hide the program's own outcome
                print(f"kiseki: could not end run {run.info.run_id} at exit: {exc}", file=sys.stderr)


def _forget_client_after_fork() -> None:
    # The parent's client lives on an I/O thread the child does not have.
    global _client, _lock
    _client = None
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_forget_client_after_fork)
