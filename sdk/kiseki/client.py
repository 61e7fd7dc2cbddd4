"""`Client`: the synchronous API. It drives the `AsyncClient` on a background event loop thread, so both
share one implementation; `log_metric`/`log_param`/`set_tag` enqueue from the calling thread directly.
While a client exists, SIGTERM first sends (or spools) what is queued (see `kiseki._sigterm`)."""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from kiseki import _sigterm
from kiseki._input import Number
from kiseki._loop import shared_loop
from kiseki.async_client import AsyncClient
from kiseki.models import (
    Experiment,
    FileInfo,
    LogBatchResult,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
    ViewType,
)
from kiseki.paging import PagedList

_open_clients: weakref.WeakSet[Client] = weakref.WeakSet()


class Client:
    """Talks to a kiseki server (`tracking_uri`, default: the configured one; see `set_tracking_uri`) with
    the API token `token` (default `KISEKI_TRACKING_TOKEN`; see `AsyncClient`)."""

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        retry_timeout: float = 120.0,
        first_contact_timeout: float | None = None,
        max_batch_points: int = 10_000,
        flush_interval: float = 1.0,
        max_pending_points: int = 1_000_000,
        spool_dir: str | Path | None = None,
        token: str | None = None,
    ) -> None:
        self._io = shared_loop()
        self._core = AsyncClient(
            tracking_uri,
            retry_timeout=retry_timeout,
            first_contact_timeout=first_contact_timeout,
            max_batch_points=max_batch_points,
            flush_interval=flush_interval,
            max_pending_points=max_pending_points,
            spool_dir=spool_dir,
            token=token,
        )
        self.tracking_uri = self._core.tracking_uri
        self._batcher = self._core._batcher
        self._io.run(self._start())
        _open_clients.add(self)
        _sigterm.install()

    async def _start(self) -> None:
        self._core._ensure_started()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Send everything queued, then release connections."""
        _open_clients.discard(self)
        if not _open_clients:
            _sigterm.uninstall()
        self._io.run(self._core.close())

    # --- experiments ---------------------------------------------------------------------------------

    def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        return self._io.run(self._core.create_experiment(name, artifact_location, tags))

    def get_or_create_experiment(self, name: str, tags: Mapping[str, str] | None = None) -> Experiment:
        return self._io.run(self._core.get_or_create_experiment(name, tags))

    def get_experiment(self, experiment_id: str) -> Experiment:
        return self._io.run(self._core.get_experiment(experiment_id))

    def get_experiment_by_name(self, name: str) -> Experiment | None:
        return self._io.run(self._core.get_experiment_by_name(name))

    def search_experiments(
        self,
        filter_string: str = "",
        *,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Experiment]:
        return self._io.run(
            self._core.search_experiments(
                filter_string,
                view_type=view_type,
                max_results=max_results,
                order_by=order_by,
                page_token=page_token,
            )
        )

    def rename_experiment(self, experiment_id: str, new_name: str) -> Experiment:
        return self._io.run(self._core.rename_experiment(experiment_id, new_name))

    def delete_experiment(self, experiment_id: str) -> None:
        self._io.run(self._core.delete_experiment(experiment_id))

    def restore_experiment(self, experiment_id: str) -> None:
        self._io.run(self._core.restore_experiment(experiment_id))

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self._io.run(self._core.set_experiment_tag(experiment_id, key, value))

    # --- runs ----------------------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        *,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> Run:
        return self._io.run(
            self._core.create_run(
                experiment_id,
                start_time=start_time,
                tags=tags,
                run_name=run_name,
                parent_run_id=parent_run_id,
            )
        )

    def get_run(self, run_id: str) -> Run:
        return self._io.run(self._core.get_run(run_id))

    def update_run(
        self,
        run_id: str,
        status: RunStatus | str | None = None,
        name: str | None = None,
        end_time: int | None = None,
    ) -> Run:
        return self._io.run(self._core.update_run(run_id, status, name, end_time))

    def set_terminated(
        self, run_id: str, status: RunStatus | str = RunStatus.FINISHED, end_time: int | None = None
    ) -> Run:
        return self._io.run(self._core.set_terminated(run_id, status, end_time))

    def delete_run(self, run_id: str) -> None:
        self._io.run(self._core.delete_run(run_id))

    def restore_run(self, run_id: str) -> None:
        self._io.run(self._core.restore_run(run_id))

    def search_runs(
        self,
        experiment_ids: Sequence[str] | str | None = None,
        filter_string: str = "",
        run_view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        return self._io.run(
            self._core.search_runs(
                experiment_ids, filter_string, run_view_type, max_results, order_by, page_token
            )
        )

    # --- logging -------------------------------------------------------------------------------------

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[Metric] = (),
        params: Iterable[Param] = (),
        tags: Iterable[RunTag] = (),
        *,
        batch_id: str | None = None,
    ) -> LogBatchResult:
        return self._io.run(
            self._core.log_batch(run_id, list(metrics), list(params), list(tags), batch_id=batch_id)
        )

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: Number,
        timestamp: Number | None = None,
        step: Number | None = None,
    ) -> None:
        """Queue one point (returns in microseconds; blocks only when the queue is full). The value may be
        any real number (numpy/torch scalars too), step and timestamp whole numbers; bad input raises
        `InvalidInput` here, and nothing else queued is affected."""
        self._batcher.add_metric(run_id, key, value, step, timestamp, wait=True)

    def log_param(self, run_id: str, key: str, value: object) -> None:
        """Queue a param; the value is str()-ed. Bad keys or values raise `InvalidInput` here."""
        self._batcher.add_param(run_id, key, value, wait=True)

    def set_tag(self, run_id: str, key: str, value: object) -> None:
        """Queue a tag; the value is str()-ed. Bad keys or values raise `InvalidInput` here."""
        self._batcher.add_tag(run_id, key, value, wait=True)

    def delete_tag(self, run_id: str, key: str) -> None:
        self._io.run(self._core.delete_tag(run_id, key))

    def flush(self, run_id: str | None = None) -> None:
        """Wait until everything queued so far is stored; raise what a background send hit."""
        self._io.run(self._core.flush(run_id))

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        return self._io.run(self._core.get_metric_history(run_id, key))

    # --- artifacts -----------------------------------------------------------------------------------

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._io.run(self._core.log_artifact(run_id, local_path, artifact_path))

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self._io.run(self._core.log_artifacts(run_id, local_dir, artifact_path))

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        return self._io.run(self._core.list_artifacts(run_id, path))

    def download_artifacts(self, run_id: str, path: str = "", dst_path: str | Path | None = None) -> str:
        return self._io.run(self._core.download_artifacts(run_id, path, dst_path))


def _queues_free() -> bool:
    """False when the main thread, interrupted by SIGTERM, holds a client's queue lock (a send on the I/O
    thread holds one for microseconds; the main thread, stuck in the handler, would hold it for ever)."""
    for client in list(_open_clients):
        lock = client._batcher._lock
        if not lock.acquire(timeout=0.05):
            return False
        lock.release()
    return True


def _flush_on_sigterm(deadline: float) -> None:
    clients = [c for c in list(_open_clients) if c._core._started]
    if not clients:
        return
    seconds = max(0.0, deadline - time.monotonic())

    async def flush_all() -> None:
        await asyncio.gather(*(c._batcher.flush_before_exit(seconds) for c in clients))

    clients[0]._io.run(flush_all(), timeout=seconds + 5.0)  # the spooling after the deadline is quick


_sigterm.on_sigterm(_flush_on_sigterm, ready=_queues_free)


def _forget_clients_after_fork() -> None:
    # A forked child has none of the parent's I/O thread: its clients cannot flush (the child makes its own).
    _open_clients.clear()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


@atexit.register
def _flush_at_exit() -> None:
    # Queued points of a script that never called end_run/close still reach the server.
    for client in list(_open_clients):
        try:
            client.close()
        except Exception as exc:  # an exit hook must not hide the program's own outcome
            print(f"kiseki: could not send queued data at exit: {exc}", file=sys.stderr)
