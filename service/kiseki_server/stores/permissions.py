"""Per-experiment permissions of users, and the search scope that hides what a user may not read.

A user's level on an experiment is their row in experiment_permissions, else the server's default.
`readable_experiments` is the condition every search and listing adds for a non-admin caller, so a
page (and any page token, crafted or not) can only ever hold what the caller may read.
"""

from __future__ import annotations

import asyncpg

from kiseki_server.auth.models import Permission, PermissionList
from kiseki_server.auth.policy import Level, Reader
from kiseki_server.search.compiler import Params


def readable_experiments(column: str, reader: Reader | None, params: Params) -> str:
    """A condition on `column` (an experiment id expression) true for experiments `reader` may read."""
    if reader is None:
        return "TRUE"
    user = params.add(reader.user_id, "bigint")
    if reader.default >= Level.READ:
        # Readable unless an explicit row says NONE.
        return (
            f"{column} NOT IN (SELECT p.experiment_id FROM experiment_permissions p"
            f" WHERE p.user_id = {user} AND p.level < 1)"
        )
    return (
        f"{column} IN (SELECT p.experiment_id FROM experiment_permissions p"
        f" WHERE p.user_id = {user} AND p.level >= 1)"
    )


class PermissionStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def level(self, user_id: int, experiment_id: int) -> Level | None:
        """The user's explicit level on the experiment, or None (the default applies)."""
        value = await self._pool.fetchval(
            "SELECT level FROM experiment_permissions WHERE user_id = $1 AND experiment_id = $2",
            user_id,
            experiment_id,
        )
        return None if value is None else Level(value)

    async def experiment_of_run(self, run_id: str) -> int | None:
        value: int | None = await self._pool.fetchval(
            "SELECT experiment_id FROM runs WHERE run_id = $1::uuid", run_id
        )
        return value

    async def set(self, experiment_id: int, user_id: int, level: Level) -> None:
        await self._pool.execute(
            """
            INSERT INTO experiment_permissions (experiment_id, user_id, level) VALUES ($1, $2, $3)
            ON CONFLICT (user_id, experiment_id) DO UPDATE SET level = excluded.level
            """,
            experiment_id,
            user_id,
            int(level),
        )

    async def delete(self, experiment_id: int, user_id: int) -> bool:
        status: str = await self._pool.execute(
            "DELETE FROM experiment_permissions WHERE experiment_id = $1 AND user_id = $2",
            experiment_id,
            user_id,
        )
        return status != "DELETE 0"

    async def list(self, experiment_id: int, default: Level) -> PermissionList:
        rows = await self._pool.fetch(
            """
            SELECT u.name, p.level FROM experiment_permissions p JOIN users u USING (user_id)
            WHERE p.experiment_id = $1 ORDER BY u.name
            """,
            experiment_id,
        )
        return PermissionList(
            permissions=[
                Permission(experiment_id=str(experiment_id), user=r["name"], level=Level(r["level"]).label)  # type: ignore[arg-type]
                for r in rows
            ],
            default=default.label,  # type: ignore[arg-type]
        )
