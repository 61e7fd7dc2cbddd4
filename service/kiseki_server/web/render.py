"""Rendering HTML pages: templates with autoescaping, the security headers every page carries, and the
HTML error page the error middleware shows outside the API."""

from __future__ import annotations

import hashlib
import html
import logging
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web

from kiseki_server.auth.authorizer import principal_of
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.config import Settings

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
TEMPLATES = Path(__file__).with_name("templates")
CSP: web.AppKey[str] = web.AppKey("web_csp", str)


def content_security_policy(settings: Settings) -> str:
    """Scripts, styles and everything else from this service only: no inline script or style, so
    nothing a user logged can run. Images may also come from S3, where artifact previews redirect to."""
    images = ["'self'"]
    if urlsplit(settings.artifact_root).scheme == "s3":
        endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        if endpoint:
            parts = urlsplit(endpoint)
            images.append(f"{parts.scheme}://{parts.netloc}")
        else:
            images.append("https://*.amazonaws.com")
    elif settings.public_url:
        parts = urlsplit(settings.public_url)
        images.append(f"{parts.scheme}://{parts.netloc}")
    return "; ".join(
        [
            "default-src 'self'",
            f"img-src {' '.join(images)}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def static_versions() -> dict[str, str]:
    """File name → URL with a content hash, so browsers may cache static files and never see stale ones."""
    return {
        f.name: f"/static/{f.name}?v={hashlib.blake2b(f.read_bytes(), digest_size=4).hexdigest()}"
        for f in STATIC.iterdir()
        if f.is_file()
    }


def _secure(response: web.Response, csp: str) -> web.Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-cache"
    return response


def render(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    """Every page also gets `viewer` (the request's principal) and `auth` (is sign-in on), for the
    header's user name and sign-out form."""
    authorizer = request.app.get(AUTHORIZER)
    page = {"viewer": principal_of(request), "auth": bool(authorizer and authorizer.enabled), **context}
    response = aiohttp_jinja2.render_template(template, request, page, status=status)
    return _secure(response, request.app[CSP])


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    """The HTML error page. Rendering it must not fail in turn: a plain page is the fallback."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    try:
        return render(
            request, "error.html", {"status": status, "title": title, "message": message}, status=status
        )
    except Exception:
        log.exception("the error page failed to render")
        heading = html.escape(f"{status} {title}")
        body = f"<!doctype html><title>{heading}</title><h1>{heading}</h1><p>{html.escape(message)}</p>"
        return _secure(web.Response(text=body, status=status, content_type="text/html"), request.app[CSP])
