"""`kiseki server --workers N`: N processes serving one port, supervised by the parent process.

Each worker is a fresh interpreter (multiprocessing's spawn: no state forked from the parent) running its
own app and Postgres pool, and binds the port with SO_REUSEPORT, so the kernel spreads new connections
over the workers. aiohttp sets TCP_NODELAY on every accepted connection, in each worker.

The parent only supervises. It forwards SIGTERM and SIGINT to the workers (each then stops accepting,
finishes its in-flight requests within `shutdown_timeout` and closes its pool) and exits once they all
have. A worker that dies on its own is restarted after a back-off (0.5 s, doubling up to 30 s, back to
0.5 s once a worker has served for a minute), and counted in `kiseki_worker_restarts_total`; the others
keep serving meanwhile. A worker that dies before it listens, 5 times in a row, is taken for a problem a
restart cannot fix (a dropped database, a broken config): the parent then stops the others and exits 1
naming it. A worker whose parent disappears (SIGKILL) shuts down gracefully by itself. Workers sit in a
process group of their own, so a terminal's Ctrl-C reaches only the parent, which forwards it once.

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
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import cast

from kiseki_server.config import Settings
from kiseki_server.telemetry import RESTARTS_FILE

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


RESTART_DELAY_FIRST = 0.5
RESTART_DELAY_MAX = 30.0
STABLE_AFTER = 60.0
"""Seconds of service after which a worker's death restarts the back-off from RESTART_DELAY_FIRST."""
MAX_START_FAILURES = 5
"""Deaths before listening, in a row, after which the parent gives up."""


@dataclass
class _Worker:
    number: int
    process: BaseProcess
    ready: Connection
    started: float
    listening: bool = False


@dataclass
class _Slot:
    """One worker position's restart state."""

    delay: float = RESTART_DELAY_FIRST
    start_failures: int = 0
    restart_at: float | None = None


def serve(settings: Settings, *, on_ready: Callable[[list[int]], None]) -> int:
    """Run `settings.workers` worker processes, restarting those that die, until a signal (exit code 0)
    or a worker that keeps dying at start-up (1).

    `on_ready` gets the workers' pids once every one of them listens.
    """
    if settings.port == 0:
        raise ValueError("--workers needs a fixed port: with port 0 every worker would get a port of its own")
    metrics_dir = tempfile.mkdtemp(prefix="kiseki-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    supervisor = _Supervisor(settings, metrics_dir)
    previous = {sig: signal.signal(sig, supervisor.on_signal) for sig in _STOP_SIGNALS}
    try:
        for number in range(1, settings.workers + 1):
            supervisor.start(number)
        return supervisor.supervise(on_ready)
    finally:
        supervisor.stop()
        for worker in supervisor.workers.values():
            worker.process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        supervisor.close()
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, settings: Settings, metrics_dir: str) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.workers: dict[int, _Worker] = {}
        self.slots = {number: _Slot() for number in range(1, settings.workers + 1)}
        self.stopping = False
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        # A signal must end a wait for the next restart at once: the handler writes here, wait() reads.
        self._wakeup, self._wake = socket.socketpair()
        self._wake.setblocking(False)

    def close(self) -> None:
        self._wakeup.close()
        self._wake.close()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self.workers))
        self.stop()
        with contextlib.suppress(OSError):
            self._wake.send(b"\0")

    def stop(self) -> None:
        """Ask every running worker to shut down gracefully (again: a second signal cuts shutdown short)."""
        self.stopping = True
        for worker in self.workers.values():
            self._terminate(worker)

    @staticmethod
    def _terminate(worker: _Worker) -> None:
        pid = worker.process.pid
        if pid is not None and worker.process.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def start(self, number: int) -> None:
        if self.stopping:
            return
        ready, announce = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_work, args=(self.settings, self.metrics_dir, announce), name=f"kiseki-worker-{number}"
        )
        worker = _Worker(number, process, ready, time.monotonic())
        self.workers[number] = worker
        process.start()
        announce.close()
        if self.stopping:  # a signal arrived while this one was being started
            self._terminate(worker)

    def supervise(self, on_ready: Callable[[list[int]], None]) -> int:
        announced = False
        exit_code = 0
        while self.workers or (
            not self.stopping and any(s.restart_at is not None for s in self.slots.values())
        ):
            starting = {w.ready: w for w in self.workers.values() if not w.listening and not w.ready.closed}
            running = {w.process.sentinel: w for w in self.workers.values()}
            due = [s.restart_at for s in self.slots.values() if s.restart_at is not None]
            timeout = None if self.stopping or not due else max(0.0, min(due) - time.monotonic())
            for event in wait([self._wakeup, *starting, *running], timeout):
                if event is self._wakeup:
                    with contextlib.suppress(BlockingIOError):
                        self._wakeup.recv(64)
                elif isinstance(event, Connection):
                    self._listening(starting[event])
                    if not announced and not self.stopping and self._all_listening():
                        announced = True
                        on_ready([w.process.pid for w in self.workers.values() if w.process.pid is not None])
                else:
                    exit_code = max(exit_code, self._died(running[cast(int, event)]))
            now = time.monotonic()
            for number, slot in self.slots.items():
                if slot.restart_at is not None and slot.restart_at <= now:
                    slot.restart_at = None
                    self.start(number)
        return exit_code

    def _all_listening(self) -> bool:
        return len(self.workers) == self.settings.workers and all(w.listening for w in self.workers.values())

    def _listening(self, worker: _Worker) -> None:
        try:
            worker.ready.recv()
        except EOFError:  # it died first; its sentinel says so
            worker.ready.close()
            return
        worker.ready.close()
        worker.listening = True
        self.slots[worker.number].start_failures = 0
        if self.restarts:
            log.warning("worker %s (pid %s) is serving again", worker.process.name, worker.process.pid)

    def _died(self, worker: _Worker) -> int:
        """Handle a worker's exit; the exit code the parent should end with because of it."""
        worker.process.join()
        del self.workers[worker.number]
        if not worker.ready.closed:
            worker.ready.close()
        _forget_metrics_of(worker.process.pid, self.metrics_dir)
        name, pid, code = worker.process.name, worker.process.pid, worker.process.exitcode
        if self.stopping:
            if code not in (0, -signal.SIGTERM):
                log.error("worker %s exited with code %s while stopping", name, code)
                return 1
            return 0
        slot = self.slots[worker.number]
        served = time.monotonic() - worker.started
        if not worker.listening:
            slot.start_failures += 1
            if slot.start_failures >= MAX_START_FAILURES:
                log.error(
                    "worker %s died before it could listen %d times in a row (last exit code %s); giving up "
                    "and stopping the others: see the worker's errors above",
                    name,
                    slot.start_failures,
                    code,
                )
                self.stop()
                return 1
        elif served >= STABLE_AFTER:
            slot.delay = RESTART_DELAY_FIRST
        log.error(
            "worker %s (pid %s) exited with code %s after %.1f s; restarting it in %g s",
            name,
            pid,
            code,
            served,
            slot.delay,
        )
        slot.restart_at = time.monotonic() + slot.delay
        slot.delay = min(slot.delay * 2, RESTART_DELAY_MAX)
        self.restarts += 1
        _record_restarts(self.restarts, self.metrics_dir)
        return 0


def _record_restarts(count: int, metrics_dir: str) -> None:
    """Publish the restart count where the workers' /metrics reads it (see telemetry.RESTARTS_FILE)."""
    path = Path(metrics_dir) / RESTARTS_FILE
    partial = path.with_suffix(".partial")
    partial.write_text(str(count))
    partial.replace(path)


def _forget_metrics_of(pid: int | None, metrics_dir: str) -> None:
    """Drop a dead worker's live gauges (its counters stay: they still count what it served)."""
    from prometheus_client.multiprocess import mark_process_dead

    if pid is not None:
        mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


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
