"""The run browser: server-rendered HTML pages to find, inspect and compare runs (see docs/ui.md).

`setup(app)` installs it on the service's app: Jinja2 templates (autoescaped), the stylesheet and the
one small script under /static/, the pages, and the HTML error page that the error middleware shows
for paths outside /api/.
"""

from __future__ import annotations

import aiohttp_jinja2
import jinja2
from aiohttp import web

from kiseki_server.appkeys import SETTINGS
from kiseki_server.errors import ERROR_PAGE
from kiseki_server.web import pages, views
from kiseki_server.web.render import (
    CSP,
    STATIC,
    TEMPLATES,
    content_security_policy,
    error_page,
    static_versions,
)

__all__ = ["setup"]


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
    )
    app[CSP] = content_security_policy(app[SETTINGS])
    app[ERROR_PAGE] = error_page
    app.router.add_static("/static/", STATIC)
    app.router.add_routes(pages.ROUTES)
