"""Operations endpoints, outside the versioned API: liveness, readiness and Prometheus metrics.

- `/healthz`: the process runs its event loop. No I/O, so a slow database never gets a replica killed.
- `/readyz`: Postgres answers through the pool and the artifact store is usable; otherwise 503 with
  what is down, so a load balancer stops sending traffic here until it recovers.
- `/metrics`: Prometheus text (or OpenMetrics, by Accept header), summed over worker processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import asyncpg
import orjson
from aiohttp import web

from kiseki_server.appkeys import ARTIFACTS, POOL, SETTINGS
from kiseki_server.auth.middleware import protect
from kiseki_server.auth.policy import READ
from kiseki_server.errors import KisekiError
from kiseki_server.telemetry import TELEMETRY


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def _postgres(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")


async def _check(check: Awaitable[None], patience: float) -> dict[str, object]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(patience):
            await check
    except TimeoutError:
        return {"status": "down", "error": f"no answer within {patience:g} s"}
    except KisekiError as exc:
        cause = exc.__cause__
        detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return {"status": "down", "error": exc.message + detail}
    except Exception as exc:
        return {"status": "down", "error": f"{type(exc).__name__}: {exc}"}
    return {"status": "ok", "duration_ms": round((time.perf_counter() - started) * 1000, 2)}


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    patience = app[SETTINGS].readiness_timeout
    postgres, artifacts = await asyncio.gather(
        _check(_postgres(app[POOL]), patience), _check(app[ARTIFACTS].ping(), patience)
    )
    checks = {"postgres": postgres, "artifact_store": artifacts}
    down = [name for name, result in checks.items() if result["status"] != "ok"]
    body = {"status": "unavailable" if down else "ok", "down": down, "checks": checks}
    return _json(body, status=503 if down else 200)


async def metrics(request: web.Request) -> web.Response:
    telemetry = request.app[TELEMETRY]
    telemetry.sample_pool(request.app[POOL])
    body, content_type = telemetry.exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def add_routes(app: web.Application) -> None:
    """The probes are always open; /metrics needs a read credential under auth unless metrics_public."""
    protect(app, app.router.add_get("/healthz", healthz), None)
    protect(app, app.router.add_get("/readyz", readyz), None)
    metrics_access = None if app[SETTINGS].metrics_public else READ
    protect(app, app.router.add_get("/metrics", metrics), metrics_access)
