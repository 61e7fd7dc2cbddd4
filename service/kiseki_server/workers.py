"""`kiseki server --workers N`: N processes serving one port, supervised by the parent process.

Each worker is a fresh interpreter (multiprocessing's spawn: no state forked from the parent) running its
own app and Postgres pool, and binds the port with SO_REUSEPORT, so the kernel spreads new connections
over the workers. aiohttp sets TCP_NODELAY on every accepted connection, in each worker.

The parent only supervises. It forwards SIGTERM and SIGINT to the workers (each then stops accepting,
finishes its in-flight requests within `shutdown_timeout` and closes its pool) and exits once they all
have. If a worker dies on its own, the parent stops the others and exits non-zero: the orchestrator
restarts the whole unit rather than leaving it running degraded. A worker whose parent disappears
(SIGKILL) shuts down gracefully by itself. Workers sit in a process group of their own, so a terminal's
Ctrl-C reaches only the parent, which forwards it once.

Metrics: the parent creates prometheus-client's multiprocess folder; the workers inherit its location as
PROMETHEUS_MULTIPROC_DIR (read by prometheus-client when it is imported, the one way it takes it) and get
it as an argument for the collector, so /metrics sums all workers whichever answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from kiseki_server.config import Settings

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class _Worker:
    process: BaseProcess
    ready: Connection


def serve(settings: Settings, *, on_ready: Callable[[list[int]], None]) -> int:
    """Run `settings.workers` worker processes until a signal (exit code 0) or a worker's death (1).

    `on_ready` gets the workers' pids once every one of them listens.
    """
    if settings.port == 0:
        raise ValueError("--workers needs a fixed port: with port 0 every worker would get a port of its own")
    metrics_dir = tempfile.mkdtemp(prefix="kiseki-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    supervisor = _Supervisor(settings, metrics_dir)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in _STOP_SIGNALS}
    try:
        supervisor.start()
        return supervisor.supervise(on_ready)
    finally:
        supervisor.stop()
        for worker in supervisor.workers:
            worker.process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, settings: Settings, metrics_dir: str) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.workers: list[_Worker] = []
        self.stopping = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stop()

    def stop(self) -> None:
        """Ask every running worker to shut down gracefully (again: a second signal cuts shutdown short)."""
        self.stopping = True
        for worker in self.workers:
            self._terminate(worker)

    @staticmethod
    def _terminate(worker: _Worker) -> None:
        pid = worker.process.pid
        if pid is not None and worker.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for number in range(1, self.settings.workers + 1):
            if self.stopping:
                return
            ready, announce = context.Pipe(duplex=False)
            process = context.Process(
                target=_work,
                args=(self.settings, self.metrics_dir, announce),
                name=f"kiseki-worker-{number}",
            )
            worker = _Worker(process, ready)
            self.workers.append(worker)
            process.start()
            announce.close()
            if self.stopping:  # a signal arrived while this one was being started
                self._terminate(worker)

    def supervise(self, on_ready: Callable[[list[int]], None]) -> int:
        starting = {w.ready for w in self.workers}
        running: dict[object, _Worker] = {w.process.sentinel: w for w in self.workers}
        listening: list[int] = []
        exit_code = 0
        while running:
            for event in wait([*starting, *running]):
                if isinstance(event, Connection):
                    starting.discard(event)
                    with contextlib.suppress(EOFError):  # EOF: it died first; its sentinel says so
                        listening.append(event.recv())
                    event.close()
                    if len(listening) == len(self.workers) and not self.stopping:
                        on_ready(listening)
                    continue
                worker = running.pop(event)
                worker.process.join()
                _forget_metrics_of(worker.process.pid, self.metrics_dir)
                code = worker.process.exitcode
                if not self.stopping:
                    log.error(
                        "worker %s (pid %s) exited with code %s; stopping the others",
                        worker.process.name,
                        worker.process.pid,
                        code,
                    )
                    exit_code = 1
                    self.stop()
                elif code not in (0, -signal.SIGTERM):
                    log.error("worker %s exited with code %s while stopping", worker.process.name, code)
                    exit_code = 1
        return exit_code


def _forget_metrics_of(pid: int | None, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges (its counters stay: they still count what it served)."""
    from prometheus_client.multiprocess import mark_process_dead

    if pid is not None:
        mark_process_dead(pid, metrics_dir)


def _work(settings: Settings, metrics_dir: str, announce: Connection) -> None:
    """A worker process: one app on the shared port until SIGTERM (or the parent's death)."""
    os.setpgrp()
    from kiseki_server import serving
    from kiseki_server.app import create_app
    from kiseki_server.logs import configure_logging

    configure_logging(settings)
    app = create_app(settings, metrics_dir=metrics_dir)
    app.on_startup.append(_exit_with_parent)

    def listening() -> None:
        announce.send(os.getpid())
        announce.close()

    serving.run(
        app,
        host=settings.host,
        port=settings.port,
        reuse_port=True,
        shutdown_timeout=settings.shutdown_timeout,
        on_listening=listening,
    )


async def _exit_with_parent(app: object) -> None:
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    loop = asyncio.get_running_loop()

    def parent_gone() -> None:
        loop.remove_reader(parent.sentinel)
        log.warning("the supervising process is gone; shutting down")
        os.kill(os.getpid(), signal.SIGTERM)

    loop.add_reader(parent.sentinel, parent_gone)
