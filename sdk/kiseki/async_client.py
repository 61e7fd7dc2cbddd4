"""`AsyncClient`: the one implementation of the API calls; the sync `Client` drives it from a thread."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

from kiseki._artifacts import ArtifactTransfer, artifact_files
from kiseki._batcher import Batcher
from kiseki._http import Transport
from kiseki._input import Number
from kiseki._spool import Spool, describe, request_for, send_entries
from kiseki.config import get_tracking_uri, normalize_tracking_uri
from kiseki.errors import NotFound
from kiseki.models import (
    Experiment,
    ExperimentGetOrCreateResult,
    ExperimentList,
    ExperimentSearch,
    FileInfo,
    LogBatchResult,
    Metric,
    Param,
    Run,
    RunList,
    RunSearch,
    RunStatus,
    RunTag,
    ViewType,
)
from kiseki.paging import PagedList

SPOOL_SYNC_SECONDS = 5.0
"""Retry budget for sending spooled batches on flush: a server that is still away should not hold it up."""
log = logging.getLogger("kiseki")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class AsyncClient:
    """Talks to a kiseki server from async code.

    `log_metric`, `log_param` and `set_tag` check their input, then queue it for background batching;
    `flush()` (also called by `close()` and `async with`) waits until it is stored. Batches the server did
    not take within `retry_timeout` go to the spool folder (`spool_dir`, default `$KISEKI_SPOOL_DIR` or
    ~/.cache/kiseki/spool) and are sent by a later `flush()`/`close()` or `kiseki sync`. Everything else
    is one request. Until the server has answered once, requests give up after `first_contact_timeout`
    seconds (default `KISEKI_FIRST_CONTACT_TIMEOUT`, else 10), so a wrong URL fails fast.

    `token`: the API token of a server with auth on, sent as `Authorization: Bearer` on every request to
    it (default `KISEKI_TRACKING_TOKEN`). A refused token raises `Unauthenticated` / `PermissionDenied`;
    queued batches it could not send are spooled, not dropped.
    """

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
        self.tracking_uri = normalize_tracking_uri(tracking_uri) if tracking_uri else get_tracking_uri()
        self._http = Transport(
            self.tracking_uri,
            retry_timeout=retry_timeout,
            first_contact_timeout=first_contact_timeout,
            token=token,
        )
        self._spool = Spool(self.tracking_uri, Path(spool_dir) if spool_dir is not None else None)
        self._batcher = Batcher(
            self._send_batch,
            max_batch_points=max_batch_points,
            flush_interval=flush_interval,
            max_pending_points=max_pending_points,
            spool=self._spool,
        )
        self._artifacts = ArtifactTransfer(self._http)
        self._started = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Send everything queued, then release the connection pool."""
        try:
            if self._started:
                await self._batcher.close()
                self._started = False
                await self._send_spooled()
                self._batcher.raise_errors()
        finally:
            await self._http.close()

    def _ensure_started(self) -> None:
        if not self._started:
            self._batcher.start(asyncio.get_running_loop())
            self._started = True

    # --- experiments ---------------------------------------------------------------------------------

    async def create_experiment(
        self, name: str, artifact_location: str | None = None, tags: Mapping[str, str] | None = None
    ) -> str:
        """Create an experiment; returns its id. A taken name raises `Conflict`."""
        body = {"name": name, "artifact_location": artifact_location, "tags": dict(tags or {})}
        data = await self._http.request("POST", "/api/v1/experiments", json=body)
        return Experiment.model_validate(data).experiment_id

    async def get_or_create_experiment(self, name: str, tags: Mapping[str, str] | None = None) -> Experiment:
        """The active experiment named `name`, created if missing: safe when many jobs start at once."""
        data = await self._http.request(
            "POST",
            "/api/v1/experiments/get-or-create",
            json={"name": name, "tags": dict(tags or {})},
            idempotent=True,
        )
        return ExperimentGetOrCreateResult.model_validate(data).experiment

    async def get_experiment(self, experiment_id: str) -> Experiment:
        return Experiment.model_validate(
            await self._http.request("GET", f"/api/v1/experiments/{experiment_id}")
        )

    async def get_experiment_by_name(self, name: str) -> Experiment | None:
        """The active experiment with this name, or None."""
        try:
            data = await self._http.request("GET", "/api/v1/experiments/by-name", params={"name": name})
        except NotFound:
            return None
        return Experiment.model_validate(data)

    async def search_experiments(
        self,
        filter_string: str = "",
        *,
        view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Experiment]:
        body = ExperimentSearch(
            filter=filter_string,
            view_type=view_type,
            max_results=max_results,
            order_by=list(order_by or []),
            page_token=page_token,
        )
        data = await self._http.request(
            "POST", "/api/v1/experiments/search", body=body.model_dump_json().encode(), idempotent=True
        )
        page = ExperimentList.model_validate(data)
        return PagedList(page.experiments, page.next_page_token)

    async def rename_experiment(self, experiment_id: str, new_name: str) -> Experiment:
        data = await self._http.request(
            "PATCH", f"/api/v1/experiments/{experiment_id}", json={"name": new_name}
        )
        return Experiment.model_validate(data)

    async def delete_experiment(self, experiment_id: str) -> None:
        await self._http.request("DELETE", f"/api/v1/experiments/{experiment_id}")

    async def restore_experiment(self, experiment_id: str) -> None:
        await self._http.request("POST", f"/api/v1/experiments/{experiment_id}/restore", idempotent=True)

    async def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        await self._http.request(
            "POST",
            f"/api/v1/experiments/{experiment_id}/tags",
            json={"key": key, "value": value},
            idempotent=True,
        )

    # --- runs ----------------------------------------------------------------------------------------

    async def create_run(
        self,
        experiment_id: str,
        *,
        start_time: int | None = None,
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> Run:
        body: dict[str, Any] = {"experiment_id": experiment_id, "tags": dict(tags or {})}
        if start_time is not None:
            body["start_time"] = start_time
        if run_name is not None:
            body["run_name"] = run_name
        if parent_run_id is not None:
            body["parent_run_id"] = parent_run_id
        return Run.model_validate(await self._http.request("POST", "/api/v1/runs", json=body))

    async def get_run(self, run_id: str) -> Run:
        return Run.model_validate(await self._http.request("GET", f"/api/v1/runs/{run_id}"))

    async def update_run(
        self,
        run_id: str,
        status: RunStatus | str | None = None,
        name: str | None = None,
        end_time: int | None = None,
    ) -> Run:
        body: dict[str, Any] = {}
        if status is not None:
            body["status"] = RunStatus(status).value
        if name is not None:
            body["run_name"] = name
        if end_time is not None:
            body["end_time"] = end_time
        return Run.model_validate(await self._http.request("PATCH", f"/api/v1/runs/{run_id}", json=body))

    async def set_terminated(
        self, run_id: str, status: RunStatus | str = RunStatus.FINISHED, end_time: int | None = None
    ) -> Run:
        """Flush the run's queued data, then mark it ended."""
        await self.flush(run_id)
        return await self.update_run(run_id, status=status, end_time=end_time or now_ms())

    async def delete_run(self, run_id: str) -> None:
        await self._http.request("DELETE", f"/api/v1/runs/{run_id}")

    async def restore_run(self, run_id: str) -> None:
        await self._http.request("POST", f"/api/v1/runs/{run_id}/restore", idempotent=True)

    async def search_runs(
        self,
        experiment_ids: Sequence[str] | str | None = None,
        filter_string: str = "",
        run_view_type: ViewType = ViewType.ACTIVE_ONLY,
        max_results: int = 1000,
        order_by: Sequence[str] | None = None,
        page_token: str | None = None,
    ) -> PagedList[Run]:
        """One page of runs matching `filter_string` (see docs/search.md); None searches all experiments."""
        if isinstance(experiment_ids, str):
            experiment_ids = [experiment_ids]
        body = RunSearch(
            experiment_ids=list(experiment_ids) if experiment_ids else None,
            filter=filter_string,
            order_by=list(order_by or []),
            max_results=max_results,
            page_token=page_token,
            view_type=run_view_type,
        )
        data = await self._http.request(
            "POST",
            "/api/v1/runs/search",
            body=body.model_dump_json(exclude_none=True).encode(),
            idempotent=True,
        )
        page = RunList.model_validate(data)
        return PagedList(page.runs, page.next_page_token)

    # --- logging -------------------------------------------------------------------------------------

    async def log_batch(
        self,
        run_id: str,
        metrics: Iterable[Metric] = (),
        params: Iterable[Param] = (),
        tags: Iterable[RunTag] = (),
        *,
        batch_id: str | None = None,
    ) -> LogBatchResult:
        """Log at once, all or nothing (not through the background queue); retried safely by batch id."""
        body = {
            "batch_id": batch_id or str(uuid.uuid4()),
            "metrics": [m.model_dump(exclude_none=True) for m in metrics],
            "params": [p.model_dump() for p in params],
            "tags": [t.model_dump() for t in tags],
        }
        data = await self._http.request("POST", f"/api/v1/runs/{run_id}/batch", json=body, idempotent=True)
        return LogBatchResult.model_validate(data)

    async def _send_batch(self, run_id: str, body: dict[str, Any]) -> None:
        await self._http.request("POST", f"/api/v1/runs/{run_id}/batch", json=body, idempotent=True)

    async def log_metric(
        self,
        run_id: str,
        key: str,
        value: Number,
        timestamp: Number | None = None,
        step: Number | None = None,
    ) -> None:
        """Queue one point; it is sent in the background (see `flush`). The value may be any real number
        (numpy/torch scalars too), step and timestamp whole numbers; bad input raises `InvalidInput` here."""
        self._ensure_started()
        if self._batcher.full():
            await self._batcher.wait_for_space()
        self._batcher.add_metric(run_id, key, value, step, timestamp, wait=False)

    async def log_param(self, run_id: str, key: str, value: object) -> None:
        """Queue a param; the value is str()-ed. Bad keys or values raise `InvalidInput` here."""
        self._ensure_started()
        if self._batcher.full():
            await self._batcher.wait_for_space()
        self._batcher.add_param(run_id, key, value, wait=False)

    async def set_tag(self, run_id: str, key: str, value: object) -> None:
        """Queue a tag; the value is str()-ed. Bad keys or values raise `InvalidInput` here."""
        self._ensure_started()
        if self._batcher.full():
            await self._batcher.wait_for_space()
        self._batcher.add_tag(run_id, key, value, wait=False)

    async def delete_tag(self, run_id: str, key: str) -> None:
        await self.flush(run_id)
        await self._http.request("DELETE", f"/api/v1/runs/{run_id}/tags", params={"key": key})

    async def flush(self, run_id: str | None = None) -> None:
        """Wait until everything queued so far is stored (or spooled); raise what a background send hit.
        Then send batches spooled earlier for this server, if it is reachable."""
        if self._started:
            await self._batcher.send_pending()
        self._batcher.raise_errors(run_id)
        await self._send_spooled()

    async def _send_spooled(self) -> None:
        if not self._batcher.last_send_ok:
            return  # the server was just away: trying the spool now would only wait again
        paths = self._spool.entries()  # not to_thread: it also runs at interpreter exit
        if not paths:
            return

        async def send(tracking_uri: str, kind: str, run_id: str, body: dict[str, Any]) -> Any:
            method, path = request_for(kind, run_id)
            return await self._http.request(
                method,
                path,
                json=body,
                idempotent=True,
                retry_timeout=min(SPOOL_SYNC_SECONDS, self._http.retry_timeout),
            )

        report = await send_entries(paths, send)
        if report.sent or report.already:
            log.info(
                "kiseki: sent %d spooled batches (%s) from %s; %d were stored before",
                report.sent,
                describe(report.points, report.params, report.tags),
                self._spool.folder,
                report.already,
            )

    async def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every point of a metric, in (step, timestamp) order."""
        points: list[Metric] = []
        token: str | None = None
        while True:
            params = {"key": key, **({"page_token": token} if token else {})}
            data = await self._http.request("GET", f"/api/v1/runs/{run_id}/metrics/history", params=params)
            points += [
                Metric(key=key, value=float(v), step=s, timestamp=t)
                for s, t, v in zip(data["steps"], data["timestamps"], data["values"], strict=True)
            ]
            if not (token := data["next_page_token"]):
                return points

    # --- artifacts -----------------------------------------------------------------------------------

    async def log_artifact(
        self, run_id: str, local_path: str | Path, artifact_path: str | None = None
    ) -> None:
        """Upload one file to `<artifact_path>/<file name>` in the run's artifacts."""
        local = Path(local_path)
        if not await asyncio.to_thread(local.is_file):
            raise FileNotFoundError(f"no file at {local}")
        target = PurePosixPath(artifact_path or "") / local.name
        await self._artifacts.upload(run_id, [(local, str(target))])

    async def log_artifacts(
        self, run_id: str, local_dir: str | Path, artifact_path: str | None = None
    ) -> None:
        """Upload every file under `local_dir` (keeping the folder layout) below `artifact_path`."""
        folder = Path(local_dir)
        if not await asyncio.to_thread(folder.is_dir):
            raise NotADirectoryError(f"no folder at {folder}")
        files = await asyncio.to_thread(lambda: list(artifact_files(folder, artifact_path)))
        if files:
            await self._artifacts.upload(run_id, files)

    async def list_artifacts(self, run_id: str, path: str | None = None) -> list[FileInfo]:
        """One level of the run's artifact tree under `path` (the root when None)."""
        return await self._artifacts.list_files(run_id, path)

    async def download_artifacts(
        self, run_id: str, path: str = "", dst_path: str | Path | None = None
    ) -> str:
        """Download the file or folder at `path` (everything when empty) into `dst_path` (a new temporary
        folder when None); returns the local path of the downloaded file or folder."""
        dst = Path(dst_path) if dst_path is not None else Path(tempfile.mkdtemp(prefix="kiseki-artifacts-"))
        return str(await self._artifacts.download(run_id, path, dst))
