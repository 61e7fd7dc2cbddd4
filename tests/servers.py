"""Real `kiseki server` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import free_port


@contextmanager
def kiseki_server(
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    command: list[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    inherit_env: bool = True,
) -> Iterator[tuple[str, list[str]]]:
    """Start `kiseki server` (on `port`, or a free one); yields its URL and the lines it printed.
    Stops it with SIGTERM and checks that it exits cleanly.

    `command` replaces the whole command line (then `port` must be where it listens, e.g. by
    KISEKI_PORT in `env`); `inherit_env=False` makes `env` the whole environment."""
    port = port or free_port()
    command = command or [sys.executable, "-m", "kiseki", "server", "--port", str(port), *args]
    lines: list[str] = []
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})} if inherit_env else dict(env or {}),
    ) as proc:
        assert proc.stdout is not None
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not any("serving on" in line for line in lines):
                line = proc.stdout.readline()
                if not line and proc.poll() is not None:
                    pytest.fail(f"kiseki server exited with {proc.returncode}: {''.join(lines)}")
                lines.append(line)
            # Keep draining its output so the pipe never fills up and blocks the server.
            threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True).start()
            yield f"http://127.0.0.1:{port}", lines
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    assert proc.returncode == 0, f"kiseki server did not stop cleanly on SIGTERM: {proc.returncode}"
