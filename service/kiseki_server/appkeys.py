"""Typed keys under which the app factory stores what handlers need."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from kiseki_server.config import Settings

if TYPE_CHECKING:
    from kiseki_server.artifacts import ArtifactStore
    from kiseki_server.stores import Stores

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
STORES: web.AppKey[Stores] = web.AppKey("stores")
ARTIFACTS: web.AppKey[ArtifactStore] = web.AppKey("artifacts")
