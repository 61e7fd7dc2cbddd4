"""Writing the audit log from a handler: who (the request's principal, its address) did what to what."""

from __future__ import annotations

from aiohttp import web

from kiseki_server.appkeys import STORES
from kiseki_server.auth.authorizer import principal_of


async def audit(
    request: web.Request, action: str, target_type: str, target_id: object, **detail: object
) -> None:
    principal = principal_of(request)
    await request.app[STORES].audit.record(
        user_id=principal.user_id,
        user_name=principal.name,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        detail=dict(detail),
        client=request.remote,
    )
