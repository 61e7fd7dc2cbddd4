"""Checks `kiseki server` makes before it starts, so that a first mistake (a port in use, a data folder it
cannot write, a second server on the same data, a wrong database URL) gets one or two plain lines naming
the fix instead of a traceback. The traceback stays available with `--log-level debug`."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urlsplit

import asyncpg

from kiseki_server.auth.credentials import SecretMismatch
from kiseki_server.auth.middleware import is_loopback
from kiseki_server.config import Settings
from kiseki_server.stores.identities import IdentityStore

CONNECT_TIMEOUT_SECONDS = 10.0
LOCK_FILE = "kiseki.lock"


class StartupError(Exception):
    """The server cannot start for a reason the user can fix; the message says how."""


def check_exposure(settings: Settings) -> None:
    """Auth off means anyone who reaches the port may read, change and purge everything: fine on a
    loopback address (like `mlflow ui`), refused on any other unless the operator says so."""
    if settings.auth or settings.allow_anonymous or is_loopback(settings.host):
        return
    raise StartupError(
        f"refusing to serve on {settings.host} with authentication off: anyone who can reach it could "
        "read and delete every run. Turn it on with --auth (KISEKI_AUTH=true; see docs/auth.md), bind "
        "127.0.0.1, or accept an open server with --allow-anonymous (KISEKI_ALLOW_ANONYMOUS=true)"
    )


def check_port(host: str, port: int) -> None:
    """Fail early, before Postgres starts, when the address cannot be listened on.

    The probe binds without SO_REUSEPORT, so it also notices another `kiseki server --workers N` (whose
    sockets have it) that the kernel would otherwise let us share the port with.
    """
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on host {host!r} ({exc.strerror}): check --host") from exc
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise StartupError(_bind_problem(host, port, exc)) from exc


def _bind_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is already in use (another kiseki server?): "
            f"stop that one, or choose another port with --port {port + 1 if port < 65535 else 5001}"
        )
    if exc.errno == errno.EACCES:
        return f"not allowed to listen on port {port} (permission denied): use a port above 1023 with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine: check --host (127.0.0.1 or 0.0.0.0)"
    return f"cannot listen on {host}:{port} ({exc.strerror or exc}): check --host and --port"


def lock_data_dir(data_dir: Path, *, url: str, exclusive: bool) -> IO[str]:
    """Check that the data folder is writable and, when `exclusive`, claim it for this server (until the
    returned file is closed or the process exits).

    Two servers on one embedded Postgres folder would share (and fight over) the same database; the lock
    file names the holder so the message can point at it. Servers of one external database may share the
    folder (local artifacts), so they take it shared.
    """
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(data_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 - held open on purpose
    except OSError as exc:
        raise StartupError(
            f"cannot write to the data folder {data_dir} ({exc.strerror or exc}): choose another with "
            "--data-dir (or KISEKI_DATA_DIR), or fix its permissions"
        ) from exc
    try:
        fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StartupError(
            f"the data folder {data_dir} is in use by another kiseki server ({holder}): use that one, "
            "or give this one its own folder with --data-dir"
        ) from exc
    if exclusive:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, {url}\n")
        handle.flush()
    return handle


def describe_url(dsn: str) -> str:
    """`host:port/db` of a Postgres URL, never its password."""
    try:
        parts = urlsplit(dsn)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        where = socket_dir or f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    except ValueError:
        return "the configured Postgres"
    database = parts.path.lstrip("/")
    return f"{where}/{database}" if database else where


async def check_auth_secret(dsn: str, settings: Settings) -> None:
    """A server whose KISEKI_AUTH_SECRET differs from the database's would refuse every stored token."""
    secret = settings.auth_secret.get_secret_value().encode() if settings.auth_secret else None
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        await IdentityStore(pool).auth_key(secret)
    except SecretMismatch as exc:
        raise StartupError(str(exc)) from None
    finally:
        await pool.close()


async def check_database(dsn: str) -> None:
    """Connect once with a short timeout, turning the usual mistakes into one line each."""
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_SECONDS)
    except Exception as exc:
        raise StartupError(database_problem(dsn, exc)) from exc
    await conn.close()


def database_problem(dsn: str, exc: BaseException) -> str:
    where = describe_url(dsn)
    fix = "check --database-url (or KISEKI_DATABASE_URL)"
    user = _user(dsn)
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return f"Postgres at {where} refused user {user!r} ({exc}): {fix}: user name and password"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"Postgres at {where} has no such database ({exc}): create it (createdb), or {fix}"
    if isinstance(exc, socket.gaierror):
        return f"cannot find the Postgres host of {where} ({exc.strerror}): {fix}"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts connections at {where} (connection refused): is Postgres running? {fix}"
    if isinstance(exc, TimeoutError):
        return f"Postgres at {where} did not answer within {CONNECT_TIMEOUT_SECONDS:g} s: {fix}"
    if isinstance(exc, OSError):
        return f"cannot reach Postgres at {where} ({exc.strerror or exc}): {fix}"
    if isinstance(exc, ValueError | asyncpg.ClientConfigurationError):
        return f"the database URL is not a valid Postgres URL ({exc}): {fix}"
    return f"cannot use Postgres at {where} ({type(exc).__name__}: {exc}): {fix}"


def _user(dsn: str) -> str:
    try:
        return urlsplit(dsn).username or os.environ.get("PGUSER", "postgres")
    except ValueError:
        return "?"
