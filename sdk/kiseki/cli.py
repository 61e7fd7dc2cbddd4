"""The `kiseki` command."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiseki", description="kiseki experiment tracking")
    commands = parser.add_subparsers(dest="command", required=True)
    server = commands.add_parser("server", help="run the tracking service")
    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_commands.add_parser("upgrade", help="apply pending schema migrations (idempotent)")
    try:
        from kiseki_server import cli as server_cli  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        server_cli = None
    else:
        server_cli.add_arguments(server, upgrade)
    args = parser.parse_args(argv)
    if server_cli is None:
        print("kiseki: the service is not installed; run: pip install 'kiseki[server]'", file=sys.stderr)
        return 2
    if args.command == "server":
        return int(server_cli.serve(args))
    return int(server_cli.upgrade(args))


if __name__ == "__main__":
    sys.exit(main())
