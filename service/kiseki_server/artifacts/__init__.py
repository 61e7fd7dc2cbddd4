"""Artifact storage: the S3 store, or the local folder of the embedded default, chosen by the root's scheme.

`open_artifact_store` is what the app factory opens once per app; handlers reach the store through the
`ARTIFACTS` app key and only ever see the `ArtifactStore` API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from kiseki_server.artifacts.local import LocalArtifactStore
from kiseki_server.artifacts.s3 import S3ArtifactStore, open_s3_store
from kiseki_server.artifacts.signing import UrlSigner, load_or_create_key
from kiseki_server.artifacts.store import ArtifactStore
from kiseki_server.config import Settings

__all__ = ["ArtifactStore", "LocalArtifactStore", "S3ArtifactStore", "open_artifact_store"]

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def open_artifact_store(settings: Settings) -> AsyncIterator[ArtifactStore]:
    """The store for `settings.artifact_root`: `s3://bucket/prefix` → S3, `file:///path` → local."""
    root = settings.artifact_root
    scheme = urlsplit(root).scheme
    if scheme == "s3":
        async with open_s3_store(settings, root) as store:
            yield store
    elif scheme == "file":
        if settings.artifact_signing_key is not None:
            key = settings.artifact_signing_key.get_secret_value().encode()
            if len(key) < 32:
                raise ValueError("KISEKI_ARTIFACT_SIGNING_KEY must have at least 32 characters")
        else:
            key = await asyncio.to_thread(load_or_create_key, settings.data_dir)
        local = LocalArtifactStore(
            root_uri=root,
            signer=UrlSigner(key),
            url_expiry_seconds=settings.artifact_url_expiry_seconds,
            multipart_threshold=settings.artifact_multipart_threshold,
            part_size=settings.artifact_multipart_part_size,
        )
        try:
            await asyncio.to_thread(local.root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            # Served as 503s until the folder appears (e.g. a volume mounted late), like unreachable S3.
            log.error("cannot create the artifact folder %s: %s", local.root, exc)
        yield local
    else:
        raise ValueError(f"the artifact root must be s3://bucket[/prefix] or file:///path, got {root!r}")
