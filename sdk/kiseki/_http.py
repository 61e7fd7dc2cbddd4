"""The HTTP transport: JSON requests with retries (exponential backoff with full jitter) and typed errors.

Retries happen on connection errors, timeouts, 5xx and 429 (honouring Retry-After), but only for requests
that are safe to repeat: reads, idempotent writes (a batch carries its id; get-or-create, updates and
deletes converge), and any request that never reached the server (connection refused). A 401 or 403 is
never retried: a token does not get better by waiting.

The API token (`Authorization: Bearer`) goes on this transport's session only: presigned artifact URLs are
fetched by separate sessions, so storage never sees it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import aiohttp
import pydantic_core

from kiseki import __version__
from kiseki.config import TOKEN_ENV, get_first_contact_timeout, get_tracking_token
from kiseki.errors import (
    KisekiError,
    NotKisekiServer,
    PermissionDenied,
    ServerUnavailable,
    Unauthenticated,
    error_for_status,
)

_RETRY_STATUSES = {429, 500, 502, 503, 504}
log = logging.getLogger("kiseki")


def dumps(data: Any) -> bytes:
    """JSON with NaN and ±inf as the strings the API expects."""
    return pydantic_core.to_json(data, inf_nan_mode="strings")


class Transport:
    def __init__(
        self,
        base_url: str,
        *,
        retry_timeout: float = 120.0,
        first_contact_timeout: float | None = None,
        request_timeout: float = 120.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 5.0,
        token: str | None = None,
    ) -> None:
        """`token`: the API token to send (None: `KISEKI_TRACKING_TOKEN`, if set; "": none)."""
        self.base_url = base_url.rstrip("/")
        self._token = (get_tracking_token() if token is None else token.strip()) or None
        self.retry_timeout = retry_timeout
        self.first_contact_timeout = (
            get_first_contact_timeout() if first_contact_timeout is None else first_contact_timeout
        )
        self.answered = False
        """Whether the server has answered at all yet: until it has, give up after first_contact_timeout."""
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._session: aiohttp.ClientSession | None = None
        self._last_warning = -1e9

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"User-Agent": f"kiseki-python/{__version__}"}
            if self._token is not None:
                headers["Authorization"] = f"Bearer {self._token}"
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                headers=headers,
                connector=aiohttp.TCPConnector(limit=64),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
        idempotent: bool | None = None,
        retry_timeout: float | None = None,
    ) -> Any:
        """The decoded JSON answer of a 2xx response; typed `KisekiError`s for the rest. `retry_timeout`
        overrides the transport's retry budget for this request."""
        if idempotent is None:
            idempotent = method in ("GET", "PUT", "PATCH", "DELETE", "HEAD")
        data = body if body is not None else (dumps(json) if json is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else None
        url = f"{self.base_url}{path}"
        budget = self.retry_timeout if retry_timeout is None else retry_timeout
        if not self.answered:
            budget = min(budget, self.first_contact_timeout)
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            delay: float | None = None
            try:
                async with self.session.request(method, url, data=data, params=params, headers=headers) as r:
                    raw = await r.read()
                    self.answered = True
                    if r.status < 400:
                        return pydantic_core.from_json(raw) if raw else None
                    error = self._not_kiseki(r.status, raw) or self._explain(_error(r.status, raw))
                    if r.status not in _RETRY_STATUSES or not idempotent:
                        raise error
                    delay = _retry_after(r.headers.get("Retry-After"))
                    if delay is not None:  # spread clients out: all waiting exactly as long come back at once
                        delay *= random.uniform(1.0, 1.5)
            except aiohttp.ClientConnectorError as exc:
                # The request never reached the server: any request is safe to send again.
                error = self._unavailable(exc)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                error = self._unavailable(exc)
                if not idempotent:
                    raise error from exc
            attempt += 1
            if attempt == 1 and time.monotonic() - self._last_warning > 30:
                self._last_warning = time.monotonic()
                remaining = deadline - time.monotonic()
                log.warning("kiseki: %s; retrying for up to %.0f s", error.message, remaining)
            if delay is None:
                delay = random.uniform(0, min(self._backoff_cap, self._backoff_base * 2**attempt))
            if time.monotonic() + delay > deadline:
                raise error
            await asyncio.sleep(delay)

    def _unavailable(self, exc: BaseException) -> ServerUnavailable:
        detail = str(exc) or type(exc).__name__
        if not self.answered:
            return ServerUnavailable(
                f"no kiseki server answered at {self.base_url} within {self.first_contact_timeout:g} s "
                f"({detail}). Check that `kiseki server` runs there and that host and port are right; "
                "point the SDK elsewhere with kiseki.set_tracking_uri(...) or KISEKI_TRACKING_URI "
                "(KISEKI_FIRST_CONTACT_TIMEOUT waits longer for a server that is still starting)."
            )
        return ServerUnavailable(
            f"no kiseki server answered at {self.base_url} ({detail}). Start one with `kiseki server`, "
            "or point the SDK elsewhere with kiseki.set_tracking_uri(...) or KISEKI_TRACKING_URI."
        )

    def _explain(self, error: KisekiError) -> KisekiError:
        """A refused credential, with what to change: the server's own words say only what is wrong."""
        if isinstance(error, Unauthenticated):
            if self._token is None:
                error.message = (
                    f"the kiseki server at {self.base_url} requires an API token ({error.message}). Set "
                    f"{TOKEN_ENV} to a token (`kiseki tokens create`, or ask the server's admin), or pass "
                    "token=... to Client/AsyncClient."
                )
            else:
                error.message = (
                    f"the kiseki server at {self.base_url} refused the API token: {error.message}. Set "
                    f"{TOKEN_ENV} (or token=...) to a valid token; `kiseki tokens create` makes a new one."
                )
        elif isinstance(error, PermissionDenied):
            error.message = (
                f"the kiseki server at {self.base_url} refused this request: {error.message}. Logging needs "
                f"a token with write scope in {TOKEN_ENV} (or token=...) and EDIT permission on the "
                "experiment (granted by its managers or an admin)."
            )
        else:
            return error
        error.args = (error.message,)
        return error

    def _not_kiseki(self, status: int, raw: bytes) -> NotKisekiServer | None:
        """A 404 for a route kiseki does not have: the URL points at something else (or at a path below
        the server's base), which a bare "Not Found" would not tell the user."""
        if status != 404:
            return None
        try:
            code = pydantic_core.from_json(raw)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if code not in (None, "NOT_FOUND"):  # kiseki's own 404s for unknown experiments, runs, files
            return None
        return NotKisekiServer(
            f"{self.base_url} does not look like the base URL of a kiseki server (HTTP 404 for an API "
            "route). Use the URL `kiseki server` prints, e.g. http://127.0.0.1:5000, without /api/v1 "
            "or any other path, in kiseki.set_tracking_uri(...) or KISEKI_TRACKING_URI.",
        )


def _error(status: int, raw: bytes) -> KisekiError:
    try:
        detail = pydantic_core.from_json(raw)["error"]
        return error_for_status(status, detail["message"], code=detail.get("code"), field=detail.get("field"))
    except (ValueError, KeyError, TypeError):
        text = raw.decode("utf-8", "replace").strip()[:500]
        return error_for_status(status, f"HTTP {status}: {text or 'no details'}")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
