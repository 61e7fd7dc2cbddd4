"""Storage classes: raw SQL on asyncpg, returning pydantic models."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from kiseki_server.stores.audit import AuditStore
from kiseki_server.stores.browse import BrowseStore
from kiseki_server.stores.datasets import DatasetStore
from kiseki_server.stores.experiments import ExperimentStore
from kiseki_server.stores.identities import IdentityStore
from kiseki_server.stores.metrics import MetricStore
from kiseki_server.stores.permissions import PermissionStore
from kiseki_server.stores.runs import RunStore
from kiseki_server.stores.search import SearchStore


@dataclass(frozen=True, slots=True)
class Stores:
    experiments: ExperimentStore
    runs: RunStore
    metrics: MetricStore
    search: SearchStore
    browse: BrowseStore
    datasets: DatasetStore
    identities: IdentityStore
    permissions: PermissionStore
    audit: AuditStore

    @classmethod
    def open(cls, pool: asyncpg.Pool, *, artifact_root: str) -> Stores:
        return cls(
            experiments=ExperimentStore(pool, artifact_root=artifact_root),
            runs=RunStore(pool),
            metrics=MetricStore(pool),
            search=SearchStore(pool),
            browse=BrowseStore(pool),
            datasets=DatasetStore(pool),
            identities=IdentityStore(pool),
            permissions=PermissionStore(pool),
            audit=AuditStore(pool),
        )
