"""The spool: logging batches the server did not take within the retry budget, kept on disk until it does.

Folder: `$KISEKI_SPOOL_DIR`, else `$XDG_CACHE_HOME/kiseki/spool`, else `~/.cache/kiseki/spool`; below it one
folder per server (`<host>_<port>-<hash of the URL>`) and one JSON file per batch (or per run's final
status, saved on SIGTERM while the server was away), named `<epoch ms>-<run id>-<batch id>.json` so that
name order is the order the batches were made in. A file is written under a temporary name (`.tmp-*`),
fsynced, then renamed: a crash leaves no torn entry, at worst an ignored temporary file. Each entry keeps
its batch id, so sending it again is applied once by the server. An entry is deleted only after the
server acknowledged it (applied, or applied before); one the server refuses as invalid (400, 404, 409,
413, 422) moves to `rejected/` beside a `.error` note, is reported, and is never retried.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kiseki._http import dumps
from kiseki.errors import Conflict, InvalidInput, KisekiError, NotFound

SPOOL_DIR_ENV = "KISEKI_SPOOL_DIR"
FORMAT = "kiseki-spool/1"
log = logging.getLogger("kiseki")

BATCH = "batch"
"""An entry holding a logging batch: POST /api/v1/runs/{run_id}/batch."""
RUN_UPDATE = "run_update"
"""An entry holding a run's final status and end time (SIGTERM with the server away): PATCH the run."""

Send = Callable[[str, str, str, dict[str, Any]], Awaitable[Any]]
"""Send one entry: (tracking URI, kind, run id, body) -> the server's answer; raises transport errors."""


def request_for(kind: str, run_id: str) -> tuple[str, str]:
    """(method, path) that sends an entry of `kind`; both are idempotent."""
    if kind == RUN_UPDATE:
        return "PATCH", f"/api/v1/runs/{run_id}"
    return "POST", f"/api/v1/runs/{run_id}/batch"


def default_dir() -> Path:
    if configured := os.environ.get(SPOOL_DIR_ENV):
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "kiseki" / "spool"


def server_folder(root: Path, tracking_uri: str) -> Path:
    """The spool folder of one server: readable name, plus a hash so distinct URLs never share one."""
    uri = tracking_uri.rstrip("/")
    parts = urlsplit(uri)
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.hostname or 'server'}_{parts.port or ''}{parts.path}")
    return root / f"{readable.strip('_')}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}"


def counts(body: dict[str, Any]) -> tuple[int, int, int]:
    """(points, params, tags) a batch body carries."""
    points = sum(len(c["values"]) for c in body.get("metric_columns", {}).values())
    return points + len(body.get("metrics", [])), len(body.get("params", [])), len(body.get("tags", []))


def describe(points: int, params: int, tags: int) -> str:
    return f"{points:,} points, {params} params and {tags} tags"


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Spool:
    """The spool folder of one server, for one client."""

    def __init__(self, tracking_uri: str, root: Path | None = None) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.root = root if root is not None else default_dir()
        self.folder = server_folder(self.root, self.tracking_uri)

    def write(self, run_id: str, body: dict[str, Any], *, kind: str = BATCH) -> Path:
        """Save one batch (or run update) durably: temporary file, fsync, rename. Returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.time_ns() // 1_000_000:013d}-{run_id}-{body.get('batch_id') or uuid.uuid4()}.json"
        target = self.folder / name
        temporary = self.folder / f".tmp-{uuid.uuid4().hex}"
        envelope = {
            "format": FORMAT,
            "tracking_uri": self.tracking_uri,
            "kind": kind,
            "run_id": run_id,
            "created": time.time_ns() // 1_000_000,
            "body": body,
        }
        data = dumps(envelope)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_dir(self.folder)
        return target

    def entries(self) -> list[Path]:
        return entries(self.folder)


def entries(path: Path) -> list[Path]:
    """Spool entries at `path` (one entry file, a server's folder, or the whole spool), oldest first."""
    if path.is_file():
        return [path]
    try:
        found = [
            p
            for p in path.rglob("*.json")
            if not p.name.startswith(".") and "rejected" not in p.relative_to(path).parts[:-1]
        ]
    except OSError:
        return []
    return sorted(found, key=lambda p: (p.name, str(p)))


def read(path: Path) -> dict[str, Any]:
    envelope = json.loads(path.read_bytes())
    if not isinstance(envelope, dict) or envelope.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} entry")
    if not isinstance(envelope.get("body"), dict) or not isinstance(envelope.get("run_id"), str):
        raise ValueError("entry has no run_id or body")
    return envelope


def set_aside(path: Path, reason: str) -> Path:
    """Move a refused entry to `rejected/` beside a note saying why; it is never retried."""
    folder = path.parent / "rejected"
    folder.mkdir(exist_ok=True, mode=0o700)
    target = folder / path.name
    os.replace(path, target)
    target.with_name(target.name + ".error").write_text(reason + "\n", encoding="utf-8")
    return target


@dataclass
class SyncReport:
    """What sending spool entries did."""

    sent: int = 0
    """Entries the server applied now."""
    already: int = 0
    """Entries the server had applied before (an earlier sync, or a send whose answer was lost)."""
    points: int = 0
    params: int = 0
    tags: int = 0
    rejected: list[tuple[Path, str]] = field(default_factory=list)
    """(where the entry was moved, why) for entries the server refused."""
    remaining: int = 0
    """Entries left in place because the server could not be reached."""
    error: str | None = None


_REFUSED = (InvalidInput, NotFound, Conflict)


async def send_entries(paths: list[Path], send: Send, *, tracking_uri: str | None = None) -> SyncReport:
    """Send entries oldest first, each to its own server (or to `tracking_uri`), deleting each one once
    the server acknowledged it. Stops at the first server that cannot be reached (the rest stay)."""
    report = SyncReport()
    for i, path in enumerate(paths):
        try:
            envelope = read(path)
        except FileNotFoundError:
            continue  # another process sent it meanwhile
        except (OSError, ValueError) as exc:
            report.rejected.append((set_aside(path, f"unreadable spool entry: {exc}"), str(exc)))
            continue
        body: dict[str, Any] = envelope["body"]
        kind = str(envelope.get("kind", BATCH))
        try:
            answer = await send(tracking_uri or str(envelope["tracking_uri"]), kind, envelope["run_id"], body)
        except _REFUSED as exc:
            reason = f"refused by the server ({exc.status}): {exc.message}"
            report.rejected.append((set_aside(path, reason), reason))
            continue
        except KisekiError as exc:  # unreachable, overloaded, or refused for a reason not the batch's own
            report.remaining = len(paths) - i
            report.error = exc.message
            break
        path.unlink(missing_ok=True)
        if kind == BATCH and isinstance(answer, dict) and answer.get("applied") is False:
            report.already += 1
            continue
        report.sent += 1
        points, params, tags = counts(body)
        report.points += points
        report.params += params
        report.tags += tags
    for where, reason in report.rejected:
        log.warning("kiseki: a spooled batch was refused and set aside at %s: %s", where, reason)
    return report
