"""The run browser: server-rendered HTML pages to find, inspect and compare runs (see docs/ui.md).

`setup(app)` installs it on the service's app: Jinja2 templates (autoescaped), the stylesheet and the
one small script under /static/, the pages, the sign-in and sign-out routes, and the HTML error page
that the error middleware shows for paths outside /api/. Each route is entered in the access table
(auth.middleware.protect) with what it requires when authentication is on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp_jinja2
import jinja2
import markupsafe
from aiohttp import web

from kiseki_server.appkeys import SETTINGS
from kiseki_server.auth.middleware import protect
from kiseki_server.auth.policy import Principal
from kiseki_server.errors import ERROR_PAGE
from kiseki_server.web import login, pages, views
from kiseki_server.web.render import (
    CSP,
    STATIC,
    TEMPLATES,
    content_security_policy,
    error_page,
    static_versions,
)

__all__ = ["setup"]


@jinja2.pass_context
def csrf_field(context: Mapping[str, Any]) -> markupsafe.Markup:
    """`{{ csrf_field() }}` goes in every form that POSTs: the session's CSRF token, which the auth
    middleware requires of each unsafe request a browser session makes (GET forms need none)."""
    viewer = context.get("viewer")
    token = viewer.csrf_token if isinstance(viewer, Principal) else None
    if not token:
        return markupsafe.Markup("")
    return markupsafe.Markup('<input type="hidden" name="csrf_token" value="{}">').format(token)


def setup(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
        default_helpers=False,
        filters=views.FILTERS,
    )
    versions = static_versions()
    env.globals.update(
        static=versions.__getitem__,
        run_url=views.run_url,
        experiment_url=views.experiment_url,
        download_url=views.download_url,
        url=views.url,
        identifier=views.identifier,
        csrf_field=csrf_field,
    )
    app[CSP] = content_security_policy(app[SETTINGS])
    app[ERROR_PAGE] = error_page
    for route in app.router.add_static("/static/", STATIC):
        protect(app, route, None)
    protect(app, app.router.add_get("/login", login.login_page), None)
    protect(app, app.router.add_post("/login", login.login), None)
    protect(app, app.router.add_post("/logout", login.logout), login.LOGOUT)
    for path, handler, access in pages.ROUTES:
        protect(app, app.router.add_get(path, handler), access)
