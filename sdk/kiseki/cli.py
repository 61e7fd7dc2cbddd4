"""The `kiseki` command: the service (`server`, `db upgrade`) and conveniences over the SDK's client."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from kiseki import __version__, _spool
from kiseki._http import Transport
from kiseki.client import Client
from kiseki.config import DEFAULT_TRACKING_URI
from kiseki.errors import KisekiError
from kiseki.models import ViewType
from kiseki.timefmt import format_time

CLI_RETRY_SECONDS = 5.0
"""Someone is waiting at a terminal: give up on an unreachable server quickly (jobs retry for minutes)."""


def _time(ms: int | None) -> str:
    return format_time(ms, missing="-")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def experiments_list(args: argparse.Namespace) -> int:
    with Client(args.tracking_uri, retry_timeout=CLI_RETRY_SECONDS) as client:
        view = ViewType.ALL if args.all else ViewType.ACTIVE_ONLY
        experiments = client.search_experiments(view_type=view, max_results=args.max_results)
    rows = [[e.experiment_id, e.name, e.lifecycle_stage.value, _time(e.creation_time)] for e in experiments]
    print(_table(rows, ["ID", "NAME", "STAGE", "CREATED (UTC)"]))
    return 0


def runs_list(args: argparse.Namespace) -> int:
    with Client(args.tracking_uri, retry_timeout=CLI_RETRY_SECONDS) as client:
        experiment_id = args.experiment
        if not experiment_id.isdigit():
            experiment = client.get_experiment_by_name(experiment_id)
            if experiment is None:
                print(f"kiseki: no active experiment named {experiment_id!r}", file=sys.stderr)
                return 1
            experiment_id = experiment.experiment_id
        runs = client.search_runs([experiment_id], args.filter, max_results=args.max_results)
    rows = [
        [
            r.info.run_id,
            r.info.run_name,
            r.info.status.value,
            _time(r.info.start_time),
            " ".join(f"{k}={v:.4g}" for k, v in sorted(r.data.metrics.items())[:4]),
        ]
        for r in runs
    ]
    print(_table(rows, ["RUN ID", "NAME", "STATUS", "STARTED (UTC)", "METRICS"]))
    return 0


def artifacts_download(args: argparse.Namespace) -> int:
    with Client(args.tracking_uri, retry_timeout=CLI_RETRY_SECONDS) as client:
        local = client.download_artifacts(args.run_id, args.path, args.output)
    print(local)
    return 0


async def _send_spooled(paths: list[Path], tracking_uri: str | None) -> _spool.SyncReport:
    transports: dict[str, Transport] = {}

    async def send(uri: str, kind: str, run_id: str, body: dict[str, Any]) -> Any:
        transport = transports.get(uri)
        if transport is None:
            transport = transports[uri] = Transport(uri, retry_timeout=CLI_RETRY_SECONDS)
        method, path = _spool.request_for(kind, run_id)
        return await transport.request(method, path, json=body, idempotent=True)

    try:
        return await _spool.send_entries(paths, send, tracking_uri=tracking_uri)
    finally:
        for transport in transports.values():
            await transport.close()


def sync(args: argparse.Namespace) -> int:
    """Send spooled batches (see docs/sdk.md): each applied once, each entry deleted once acknowledged."""
    path = Path(args.path) if args.path else _spool.default_dir()
    paths = _spool.entries(path)
    if not paths:
        print(f"kiseki: nothing to send in {path}")
        return 0
    uri = args.tracking_uri.rstrip("/") if args.tracking_uri else None
    report = asyncio.run(_send_spooled(paths, uri))
    print(
        f"kiseki: sent {report.sent} of {len(paths)} spooled batches "
        f"({_spool.describe(report.points, report.params, report.tags)})"
        + (f"; {report.already} had been stored before" if report.already else "")
    )
    for where, reason in report.rejected:
        print(f"kiseki: refused, set aside at {where}: {reason}", file=sys.stderr)
    if report.remaining:
        print(
            f"kiseki: {report.remaining} batches stay in {path} ({report.error}); run `kiseki sync` again "
            "once the server is reachable",
            file=sys.stderr,
        )
    return 1 if report.rejected or report.remaining else 0


def _client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--tracking-uri", help=f"kiseki server URL [env KISEKI_TRACKING_URI; default: {DEFAULT_TRACKING_URI}]"
    )

    experiments = commands.add_parser("experiments", help="list experiments").add_subparsers(required=True)
    listing = experiments.add_parser("list", parents=[common], help="list experiments, newest first")
    listing.add_argument("--all", action="store_true", help="include deleted experiments")
    listing.add_argument("--max-results", type=int, default=1000, help="at most this many (default: 1000)")
    listing.set_defaults(action=experiments_list)

    runs = commands.add_parser("runs", help="list runs").add_subparsers(required=True)
    listing = runs.add_parser("list", parents=[common], help="list an experiment's runs")
    listing.add_argument("experiment", help="experiment id or name")
    listing.add_argument("--filter", default="", help='search filter, e.g. "metrics.acc > 0.9"')
    listing.add_argument("--max-results", type=int, default=1000, help="at most this many (default: 1000)")
    listing.set_defaults(action=runs_list)

    artifacts = commands.add_parser("artifacts", help="download artifacts").add_subparsers(required=True)
    download = artifacts.add_parser("download", parents=[common], help="download a run's artifacts")
    download.add_argument("run_id")
    download.add_argument("path", nargs="?", default="", help="file or folder (default: everything)")
    download.add_argument("-o", "--output", default=".", help="destination folder (default: here)")
    download.set_defaults(action=artifacts_download)

    syncing = commands.add_parser(
        "sync",
        help="send batches saved to the spool while the server was unreachable",
        description="Send the logging batches the SDK saved to its spool folder while the server was "
        "unreachable. Each is applied once (its batch id makes repeats harmless) and deleted once the "
        "server acknowledged it; one the server refuses moves to rejected/ beside a note.",
    )
    syncing.add_argument(
        "path",
        nargs="?",
        help=f"spool folder or entry file (default: ${_spool.SPOOL_DIR_ENV}, else ~/.cache/kiseki/spool)",
    )
    syncing.add_argument(
        "--tracking-uri",
        help="send every entry to this server instead of the address it was saved for",
    )
    syncing.set_defaults(action=sync)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiseki", description="kiseki experiment tracking")
    parser.add_argument("--version", action="version", version=f"kiseki {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="run the tracking service")
    db = commands.add_parser("db", help="database maintenance")
    upgrade = db.add_subparsers(dest="db_command", required=True).add_parser(
        "upgrade", help="apply pending schema migrations (idempotent)"
    )
    users = commands.add_parser("users", help="manage users (on the database, like db upgrade)")
    tokens = commands.add_parser("tokens", help="manage API tokens (on the database, like db upgrade)")
    _client_commands(commands)
    try:
        from kiseki_server import cli as server_cli  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        server_cli = None  # type: ignore[assignment,unused-ignore]
    else:
        from kiseki_server import cli_auth  # type: ignore[import-not-found,unused-ignore]

        server_cli.add_arguments(server, upgrade)
        cli_auth.add_arguments(users, tokens)
    args = parser.parse_args(argv)
    if args.command in ("server", "db", "users", "tokens"):
        if server_cli is None:
            print(
                "kiseki: the service is not installed; in a clone of kiseki run: pip install '.[server]'",
                file=sys.stderr,
            )
            return 2
        if args.command in ("users", "tokens"):
            return int(cli_auth.run(args))
        return int(server_cli.serve(args) if args.command == "server" else server_cli.upgrade(args))
    try:
        return int(args.action(args))
    except KisekiError as exc:
        print(f"kiseki: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
