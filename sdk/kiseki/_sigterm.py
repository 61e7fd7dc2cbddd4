"""Ending cleanly on SIGTERM, the signal schedulers (SLURM, Kubernetes, CI) stop jobs with.

While a sync `Client` exists (the fluent API has one), a handler is installed in the main thread, once,
chaining whatever was there. On SIGTERM it sends queued data for up to `KISEKI_SIGTERM_FLUSH_TIMEOUT`
seconds (default 10; what is not stored by then goes to the spool), ends the fluent API's active runs
KILLED (spooling that status too when the server is away), then lets the process end as it would have:
it calls the previous handler when that was a function, or restores the default action and raises the
signal again, so the exit status still says "killed by SIGTERM". A process that ignored SIGTERM
(SIG_IGN) keeps ignoring it: no handler is installed.

Not in multiprocessing children (Pool and Process workers, forked or spawned) nor in forked copies of a
process that had it: there SIGTERM keeps its default action. Python runs a signal handler only when the
main thread next executes bytecode, and a signal that lands while a worker's main thread is entering its
wait for the next task is never handled — `Pool.terminate()` (what `with Pool()` does on exit) then
waits for that worker for ever. Workers' runs end (and are sent) when their function returns; the
parent, the process a scheduler signals, flushes on SIGTERM as above.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

TIMEOUT_ENV = "KISEKI_SIGTERM_FLUSH_TIMEOUT"
DEFAULT_TIMEOUT = 10.0

Step = Callable[[float], None]
"""Work done on SIGTERM, given the monotonic deadline it must finish by."""

_steps: list[Step] = []
_ready_checks: list[Callable[[], bool]] = []
_previous: Any = None
_installed = False
_busy = False
_disabled = False
"""True in a forked child of a process that had the handler: it never installs one."""


def on_sigterm(step: Step, *, ready: Callable[[], bool] | None = None) -> None:
    """Run `step` on SIGTERM (in registration order). `ready` says whether it can run right now: False
    while the main thread, interrupted by the signal, holds a lock the step needs."""
    _steps.append(step)
    if ready is not None:
        _ready_checks.append(ready)


def timeout() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_TIMEOUT
    except ValueError:
        print(f"kiseki: ignoring {TIMEOUT_ENV}={raw!r}: not a number of seconds", file=sys.stderr)
        return DEFAULT_TIMEOUT


def install() -> None:
    """Install the handler (main thread only, once; not over SIG_IGN)."""
    global _previous, _installed
    if _installed or _disabled or threading.current_thread() is not threading.main_thread():
        return
    if multiprocessing.parent_process() is not None:
        return  # a multiprocessing worker: see the module docstring
    current = signal.getsignal(signal.SIGTERM)
    if current == signal.SIG_IGN:
        return
    _previous = current
    signal.signal(signal.SIGTERM, _handle)
    _installed = True


def uninstall() -> None:
    """Put the previous handler back, unless someone chained over ours meanwhile (then ours stays and
    passes the signal on)."""
    global _installed
    if not _installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _handle:
        signal.signal(signal.SIGTERM, _previous if _previous is not None else signal.SIG_DFL)
        _installed = False


def _forget_after_fork() -> None:
    """A forked child gets the parent's disposition back (the fork happened in the main thread when
    the handler was ours to change) and never installs the handler itself."""
    global _installed, _disabled
    _disabled = True
    if _installed and signal.getsignal(signal.SIGTERM) is _handle:
        with contextlib.suppress(ValueError):  # forked from another thread: not ours to change
            signal.signal(signal.SIGTERM, _previous if _previous is not None else signal.SIG_DFL)
    _installed = False


os.register_at_fork(after_in_child=_forget_after_fork)


def _handle(signum: int, frame: FrameType | None) -> None:
    global _busy
    if _busy:
        return  # a second SIGTERM while the first is being handled
    if not all(ready() for ready in _ready_checks):
        # The signal interrupted the main thread inside the SDK's queue lock; handle it a moment later.
        later = threading.Timer(0.005, _send_again, (signum,))
        later.daemon = True
        later.start()
        return
    _busy = True
    try:
        deadline = time.monotonic() + timeout()
        for step in _steps:
            try:
                step(deadline)
            except Exception as exc:  # the process is ending: report, and still let it end
                print(f"kiseki: on SIGTERM: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        _busy = False
    _chain(signum, frame)


def _send_again(signum: int) -> None:
    # Blocked in this thread, the signal can only go to the main thread, where its handler runs.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signum})
    os.kill(os.getpid(), signum)


def _chain(signum: int, frame: FrameType | None) -> None:
    previous = _previous
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    # SIG_DFL (or a handler installed outside Python): die of the signal, as without kiseki.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or broken stream must not keep the process alive
            stream.flush()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
