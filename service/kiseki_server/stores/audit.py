"""The audit log: who created, deleted, purged or re-permissioned what, and when. Append-only."""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from kiseki_server.auth.models import AuditEvent, AuditList
from kiseki_server.clock import now_ms
from kiseki_server.pagination import decode_token, encode_token


class AuditStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(
        self,
        *,
        user_id: int | None,
        user_name: str | None,
        action: str,
        target_type: str,
        target_id: str,
        detail: dict[str, Any] | None = None,
        client: str | None = None,
    ) -> None:
        await self._pool.execute(
            """
            INSERT INTO audit_log (at, user_id, user_name, action, target_type, target_id, detail, client)
            VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
            """,
            now_ms(),
            user_id,
            user_name,
            action,
            target_type,
            target_id,
            orjson.dumps(detail or {}).decode(),
            client,
        )

    async def list(
        self, *, action: str | None = None, max_results: int = 100, page_token: str | None = None
    ) -> AuditList:
        """Newest first."""
        after = decode_token(page_token, int)[0] if page_token else None
        rows = await self._pool.fetch(
            """
            SELECT event_id, at, user_name, action, target_type, target_id, detail::text AS detail, client
            FROM audit_log
            WHERE ($1::text IS NULL OR action = $1) AND ($2::bigint IS NULL OR event_id < $2)
            ORDER BY event_id DESC LIMIT $3
            """,
            action,
            after,
            max_results + 1,
        )
        events = [
            AuditEvent(
                event_id=str(r["event_id"]),
                at=r["at"],
                user=r["user_name"],
                action=r["action"],
                target_type=r["target_type"],
                target_id=r["target_id"],
                detail=orjson.loads(r["detail"]),
                client=r["client"],
            )
            for r in rows[:max_results]
        ]
        token = encode_token(int(events[-1].event_id)) if len(rows) > max_results else None
        return AuditList(events=events, next_page_token=token)
