"""`kiseki users …` and `kiseki tokens …` (wired into the `kiseki` command by kiseki.cli).

They work on the database directly, found the way `kiseki db upgrade` finds it (--database-url, else
the embedded Postgres of --data-dir), so an operator can make the first users and tokens before any
server runs, and recover when every admin token is lost. With the embedded Postgres they also work
while a `kiseki server` runs on the same data folder: the Postgres is shared (the last process using
it stops it), and the server sees a new or revoked token within auth_cache_seconds.

Tokens are stored as HMACs under the server's auth secret: the `auth_secret` setting
(KISEKI_AUTH_SECRET) when the server has one — give this command the same — else the database's own.
A token is printed alone on stdout (`TOKEN=$(kiseki tokens create --user ci)`); everything else goes
to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import pydantic

from kiseki.models import INT64_MAX
from kiseki.timefmt import format_time
from kiseki_server import cli as server_cli
from kiseki_server import db
from kiseki_server.auth import credentials
from kiseki_server.auth.models import UserCreate
from kiseki_server.clock import now_ms
from kiseki_server.config import Settings
from kiseki_server.errors import KisekiError
from kiseki_server.stores.audit import AuditStore
from kiseki_server.stores.identities import IdentityStore

_DAY_MS = 86_400_000


class CommandError(Exception):
    """A mistake the operator can fix: one line on stderr, exit status 1."""


@dataclass(frozen=True, slots=True)
class _Database:
    identities: IdentityStore
    audit: AuditStore
    settings: Settings

    async def key(self) -> bytes:
        """The HMAC key tokens are stored under: the same choice the server makes (auth.authorizer)."""
        secret = self.settings.auth_secret
        try:
            return await self.identities.auth_key(secret.get_secret_value().encode() if secret else None)
        except credentials.SecretMismatch as exc:
            raise CommandError(str(exc)) from None

    async def record(self, action: str, target_type: str, target_id: object, **detail: object) -> None:
        """Changes made here land in the audit log like the API's, by the operating-system user."""
        await self.audit.record(
            user_id=None,
            user_name=f"cli:{_operator()}",
            action=action,
            target_type=target_type,
            target_id=str(target_id),
            detail=dict(detail),
        )


def _operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@asynccontextmanager
async def _open(dsn: str, settings: Settings) -> AsyncIterator[_Database]:
    await db.upgrade(dsn)  # what `kiseki server` does first (idempotent; logs what it applies)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        yield _Database(IdentityStore(pool), AuditStore(pool), settings)
    finally:
        await pool.close()


Command = Callable[[_Database, argparse.Namespace], Awaitable[int]]


def _command(action: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        def with_settings(settings: Settings) -> int:
            dsn, _ = server_cli._database_url(settings)

            async def go() -> int:
                async with _open(dsn, settings) as database:
                    return await action(database, args)

            try:
                return asyncio.run(go())
            except (CommandError, KisekiError) as exc:
                print(f"kiseki: {exc}", file=sys.stderr)
                return 1
            except KeyboardInterrupt:
                print(file=sys.stderr)
                return 130

        return server_cli._run(with_settings, args)

    return run


def _read_password() -> str:
    """From the terminal (asked twice), or the first line of stdin when it is a pipe or a file."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            raise CommandError("the two passwords differ")
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    problem = credentials.check_password_rules(password)
    if problem:
        raise CommandError(f"password {problem}")
    return password


def _time(ms: int | None) -> str:
    return format_time(ms, missing="-")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    )


# --- users --------------------------------------------------------------------------------------------


async def users_create(database: _Database, args: argparse.Namespace) -> int:
    try:
        body = UserCreate(name=args.name, kind="service" if args.service else "user", is_admin=args.admin)
    except pydantic.ValidationError:
        raise CommandError(
            f"{args.name!r} is not a user name: 1 to 128 letters, digits and . _ @ - (starting with a letter "
            "or digit)"
        ) from None
    password_hash = None
    if args.password_stdin:
        password_hash = await asyncio.to_thread(credentials.hash_password, _read_password())
    user = await database.identities.create_user(
        body.name, kind=body.kind, is_admin=body.is_admin, password_hash=password_hash
    )
    await database.record(
        "user.create",
        "user",
        user.name,
        kind=user.kind,
        is_admin=user.is_admin,
        has_password=user.has_password,
    )
    what = ("admin " if user.is_admin else "") + ("service account" if user.kind == "service" else "user")
    print(f"kiseki: created {what} {user.name}" + (" with a password" if user.has_password else ""))
    return 0


async def users_list(database: _Database, args: argparse.Namespace) -> int:
    users = (await database.identities.list_users()).users
    rows = [
        [
            u.name,
            u.kind,
            "yes" if u.is_admin else "",
            "yes" if u.has_password else "",
            _time(u.created_at),
            _time(u.disabled_at) if u.disabled_at is not None else "",
        ]
        for u in users
    ]
    print(_table(rows, ["NAME", "KIND", "ADMIN", "PASSWORD", "CREATED (UTC)", "DISABLED (UTC)"]))
    return 0


async def _set_disabled(database: _Database, name: str, disabled: bool) -> int:
    user = await database.identities.update_user(name, disabled=disabled)
    signed_out = await database.identities.revoke_sessions_of(int(user.user_id)) if disabled else 0
    await database.record("user.update", "user", name, disabled=disabled, sessions_revoked=signed_out)
    if disabled:
        print(f"kiseki: disabled {name}: their tokens and sessions stop working within a second")
    else:
        print(f"kiseki: enabled {name}")
    return 0


async def users_disable(database: _Database, args: argparse.Namespace) -> int:
    return await _set_disabled(database, args.name, True)


async def users_enable(database: _Database, args: argparse.Namespace) -> int:
    return await _set_disabled(database, args.name, False)


async def users_set_password(database: _Database, args: argparse.Namespace) -> int:
    await database.identities.get_user(args.name)  # an unknown name fails before the password is asked
    password_hash = await asyncio.to_thread(credentials.hash_password, _read_password())
    user = await database.identities.update_user(args.name, password_hash=password_hash)
    signed_out = await database.identities.revoke_sessions_of(int(user.user_id))
    await database.record("user.update", "user", user.name, password="changed", sessions_revoked=signed_out)
    print(f"kiseki: set the password of {user.name} (signed out of {signed_out} browser sessions)")
    return 0


# --- tokens -------------------------------------------------------------------------------------------


async def tokens_create(database: _Database, args: argparse.Namespace) -> int:
    user = await database.identities.get_user(args.user)
    if user.disabled_at is not None:
        raise CommandError(f"user '{user.name}' is disabled: `kiseki users enable {user.name}` first")
    if args.scope == "admin" and not user.is_admin:
        raise CommandError(f"user '{user.name}' is not an admin: an admin-scoped token needs one")
    expires_at = None
    if args.expires_in is not None:
        expires_at = min(now_ms() + round(args.expires_in * _DAY_MS), INT64_MAX)
    secret = credentials.new_token()
    info = await database.identities.create_token(
        int(user.user_id),
        credentials.digest(await database.key(), "token", secret),
        name=args.name,
        scope=args.scope,
        expires_at=expires_at,
    )
    await database.record(
        "token.create", "token", info.token_id, user=user.name, scope=info.scope, name=info.name
    )
    expiry = f"expires {_time(expires_at)} UTC" if expires_at is not None else "never expires"
    print(
        f"kiseki: token {info.token_id} for {user.name}, {info.scope} scope, {expiry}; it is shown only now",
        file=sys.stderr,
    )
    print(secret)
    return 0


async def tokens_list(database: _Database, args: argparse.Namespace) -> int:
    user_id = await database.identities.user_id(args.user) if args.user else None
    tokens = (await database.identities.list_tokens(user_id)).tokens
    rows = [
        [
            t.token_id,
            t.user,
            t.name,
            t.scope,
            _time(t.created_at),
            _time(t.expires_at) if t.expires_at is not None else "never",
            _time(t.last_used_at),
            _time(t.revoked_at) if t.revoked_at is not None else "",
        ]
        for t in tokens
    ]
    header = ["ID", "USER", "NAME", "SCOPE", "CREATED (UTC)", "EXPIRES", "LAST USED", "REVOKED"]
    print(_table(rows, header))
    return 0


async def tokens_revoke(database: _Database, args: argparse.Namespace) -> int:
    if not args.token_id.isdigit() or int(args.token_id) > INT64_MAX:
        raise CommandError(f"{args.token_id!r} is not a token id (the ID column of `kiseki tokens list`)")
    token = await database.identities.revoke_token(int(args.token_id))
    await database.record("token.revoke", "token", token.token_id, user=token.user, name=token.name)
    print(f"kiseki: revoked token {token.token_id} of {token.user}; servers refuse it within a second")
    return 0


async def tokens_reset_secret(database: _Database, args: argparse.Namespace) -> int:
    tokens, sessions = await database.identities.reset_secret()
    await database.record("auth.reset_secret", "server", "auth_secret", tokens=tokens, sessions=sessions)
    print(
        f"kiseki: revoked {tokens} tokens and {sessions} browser sessions; the next server (or CLI) to start "
        "records its KISEKI_AUTH_SECRET: start every replica with the new one and create new tokens"
    )
    return 0


def tokens_generate(args: argparse.Namespace) -> int:
    """A fresh token stored nowhere: the value of a KISEKI_ADMIN_TOKEN secret (registered at start-up)."""
    print(credentials.new_token())
    return 0


# --- the parsers --------------------------------------------------------------------------------------


def add_arguments(users: argparse.ArgumentParser, tokens: argparse.ArgumentParser) -> None:
    """Sub-commands of `kiseki users` and `kiseki tokens`; each sets `auth_command(args) -> int`."""
    database = argparse.ArgumentParser(add_help=False)
    for name, options in server_cli._COMMON_FLAGS.items():
        database.add_argument(f"--{name.replace('_', '-')}", help=server_cli._help(name), **options)

    def command(
        parent: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        action: Command,
        text: str,
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, parents=[database], help=text, description=text)
        parser.set_defaults(auth_command=_command(action))
        return parser

    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="COMMAND")
    create = command(user_commands, "create", users_create, "create a user or service account")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true", help="may manage users, tokens and every experiment")
    create.add_argument("--service", action="store_true", help="a service account (for jobs, no person)")
    create.add_argument(
        "--password-stdin",
        action="store_true",
        help="set a password (browser sign-in, HTTP Basic): asked for, or the first line of stdin",
    )
    command(user_commands, "list", users_list, "list users and service accounts")
    for name, action, text in (
        ("disable", users_disable, "disable a user: their tokens and browser sessions stop working"),
        ("enable", users_enable, "enable a disabled user again (their tokens work again; sessions do not)"),
        (
            "set-password",
            users_set_password,
            "set a user's password (asked for, or stdin's first line); signs them out of browsers",
        ),
    ):
        command(user_commands, name, action, text).add_argument("name")

    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="COMMAND")
    create = command(
        token_commands,
        "create",
        tokens_create,
        "create an API token and print it, alone on stdout, this once",
    )
    create.add_argument("--user", required=True, help="whose token it is")
    create.add_argument(
        "--scope",
        choices=("read", "write", "admin"),
        default="write",
        help="read: never writes; write: logs runs (default); admin: also users and tokens (admins only)",
    )
    create.add_argument("--expires-in", type=_days, metavar="DAYS", help="expire after this many days")
    create.add_argument("--name", default="", help="what the token is for")
    listing = command(token_commands, "list", tokens_list, "list tokens (never their secrets)")
    listing.add_argument("--user", help="only this user's tokens")
    revoke = command(
        token_commands, "revoke", tokens_revoke, "revoke a token (servers refuse it within a second)"
    )
    revoke.add_argument("token_id", metavar="ID")
    command(
        token_commands,
        "reset-secret",
        tokens_reset_secret,
        "before changing KISEKI_AUTH_SECRET on purpose: revoke every token and session (they are stored "
        "under the old secret) and forget its fingerprint",
    )
    generate = token_commands.add_parser(
        "generate",
        help="print a fresh random token without storing it (for KISEKI_ADMIN_TOKEN)",
        description="Print a fresh random token without storing it anywhere: the value for a "
        "KISEKI_ADMIN_TOKEN secret, which a server registers for user 'admin' when it starts.",
    )
    generate.set_defaults(auth_command=tokens_generate)


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < days <= 100_000:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 100000 days: {text!r}")
    return days


def run(args: argparse.Namespace) -> int:
    command: Callable[[argparse.Namespace], int] = args.auth_command
    return command(args)
