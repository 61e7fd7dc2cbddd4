# ruff: noqa: F811  (the fixtures imported from test_artifacts are used as test arguments)
"""Artifact stores under hostile or heavy use: locations that dodge the root check, S3 URLs used for a
body of another size, part layouts that don't add up, and a local store that must never stall the event
loop on the filesystem. Fixtures and helpers come from test_artifacts (both stores, real SeaweedFS).
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from kiseki_server.artifacts.paths import location_under
from kiseki_server.artifacts.store import PLAN_PART_URLS
from kiseki_server.pagination import encode_token
from tests.helpers import call, new_experiment, new_run
from tests.s3 import S3Server
from tests.test_artifacts import (  # noqa: F401  (fixtures, used by name)
    PART_SIZE,
    MakeClient,
    Settle,
    _root,
    api,
    download,
    get,
    http,
    listing,
    make_client,
    make_settings,
    plan,
    put,
    store_kind,
    upload,
)

MiB = 1024 * 1024
SERVICE = Path(__import__("kiseki_server").__file__).parent
ARTIFACT_CODE = (
    str(SERVICE / "artifacts"),
    str(SERVICE / "handlers" / "artifacts.py"),
    str(SERVICE / "web" / "files.py"),
)


# --- 1. custom artifact locations must not slip inside the managed root -------------------------------


def _sneaky_locations(root: str) -> list[str]:
    """Spellings of places inside `root` that a string-prefix test takes for somewhere else."""
    scheme, rest = root.split("://", 1)
    head, _, last = rest.rstrip("/").rpartition("/")
    variants = [
        f"{scheme}://{head}//{last}/7",  # a doubled slash
        f"{scheme}://{head}/./{last}/7",  # a '.' part
        f"{scheme}://{head}/elsewhere/../{last}/7",  # '..' back into the root
        f"{scheme}://{head}/{last}/../{last}/7",
        f"{scheme}://{head}/{last}/",  # the root itself, trailing slash
        f"{scheme}://{head}/{last}//",
        f"{scheme}://{head}/{last}/.",
        f"{scheme}://{head}/{last}/./.kiseki-uploads",
    ]
    if scheme == "file":
        variants += [
            f"file://localhost{head}/{last}/7",
            f"file://{head}/%{ord(last[0]):02X}{last[1:]}/7",  # a percent-escaped letter
            f"file://{head}/{last}%2F7",  # an escaped separator
        ]
    else:
        variants.append(f"s3://{head}/{last}///7//")
    return variants


async def test_locations_inside_the_root_are_refused_however_spelled(
    store_kind: str, api: TestClient, make_settings: Settle
) -> None:
    root = make_settings().artifact_root
    for location in _sneaky_locations(root):
        assert location_under(location, root) is not None, f"{location} normalises inside {root}"
        body = {"name": f"sneaky-{uuid.uuid4().hex[:8]}", "artifact_location": location}
        error = (await call(api, "POST", "/api/v1/experiments", 400, json=body))["error"]
        assert error["field"] == "artifact_location", f"{location} was accepted inside {root}: {error}"


async def test_locations_outside_the_root_are_kept_and_not_served(
    store_kind: str, api: TestClient, make_settings: Settle
) -> None:
    root = make_settings().artifact_root
    outside = [root + "-sibling/1", root.rsplit("/", 1)[0] + "/other/x"]
    if store_kind == "s3":
        # S3 keys are literal: an escape is a different key, and storage will never equate them.
        outside.append(root.rsplit("/", 1)[0] + "/%" + f"{ord(root.rsplit('/', 1)[1][0]):02X}x")
    for location in outside:
        body = {"name": f"outside-{uuid.uuid4().hex[:8]}", "artifact_location": location}
        experiment = await call(api, "POST", "/api/v1/experiments", 201, json=body)
        assert experiment["artifact_location"] == location
        run_id = await new_run(api, experiment["experiment_id"])
        error = (await call(api, "GET", _root(run_id), 409))["error"]
        assert "outside this service's artifact root" in error["message"], location


# --- 2. S3 URLs bind the size -------------------------------------------------------------------------


@pytest.mark.parametrize("store_kind", ["s3"], indirect=True)
async def test_s3_single_put_takes_exactly_the_declared_bytes(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    run_id = await new_run(api)
    [item, empty] = await plan(api, run_id, {"exact.txt": 5, "empty.txt": 0})
    signed = parse_qs(urlsplit(item["url"]).query)["X-Amz-SignedHeaders"][0].split(";")
    assert "content-length" in signed, f"the size is not signed: {signed}"
    await put(http, item["url"], b"too long, far too long", status=403)
    await put(http, item["url"], b"shrt", status=403)
    await put(http, empty["url"], b"x", status=403)
    assert await listing(api, run_id) == [], "a refused body leaves no file"
    await put(http, item["url"], b"exact")
    await put(http, empty["url"], b"")
    assert await listing(api, run_id) == [("empty.txt", False, 0), ("exact.txt", False, 5)]


@pytest.mark.parametrize("store_kind", ["s3"], indirect=True)
async def test_s3_part_urls_take_exactly_their_part(api: TestClient, http: aiohttp.ClientSession) -> None:
    run_id = await new_run(api)
    size = 2 * PART_SIZE + 1000
    [item] = await plan(api, run_id, {"ckpt.bin": size})
    first, _, last = item["multipart"]["parts"]
    await put(http, first["url"], os.urandom(PART_SIZE + 1), status=403)
    await put(http, first["url"], os.urandom(PART_SIZE - 1), status=403)
    await put(http, last["url"], os.urandom(PART_SIZE), status=403)
    assert await put(http, last["url"], os.urandom(1000)), "the last part takes the remainder"


@pytest.mark.parametrize("store_kind", ["s3"], indirect=True)
async def test_s3_complete_checks_part_sizes_and_aborts_a_bad_upload(
    api: TestClient, http: aiohttp.ClientSession, make_settings: Settle, s3_server: S3Server
) -> None:
    """A storage server that did not enforce the signed length: the complete step still catches it."""
    run_id = await new_run(api)
    size = 2 * PART_SIZE + 1000
    content = os.urandom(size)
    [item] = await plan(api, run_id, {"ckpt.bin": size})
    upload_id = item["multipart"]["upload_id"]
    etags = [
        await put(http, p["url"], content[(p["part_number"] - 1) * PART_SIZE :][:PART_SIZE])
        for p in item["multipart"]["parts"][:2]
    ]
    parts = [{"part_number": n, "etag": e} for n, e in enumerate(etags, 1)]

    body = {"path": "ckpt.bin", "upload_id": upload_id, "parts": parts}
    error = (await call(api, "POST", _root(run_id) + "/uploads/complete", 400, json=body))["error"]
    assert error["field"] == "parts" and "3 parts" in error["message"], error
    missing = {**body, "parts": [*parts, {"part_number": 3, "etag": '"0123"'}]}
    error = (await call(api, "POST", _root(run_id) + "/uploads/complete", 400, json=missing))["error"]
    assert error["field"] == "parts.2.etag" and "never uploaded" in error["message"], error

    settings = make_settings()
    bucket = settings.artifact_root.removeprefix("s3://").split("/", 1)[0]
    artifact_uri = (await call(api, "GET", _root(run_id)))["root_uri"]
    key = artifact_uri.removeprefix(f"s3://{bucket}/") + "/ckpt.bin"
    async with s3_server.client() as s3:
        wrong = await s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=3, Body=os.urandom(999)
        )
        bad = {**body, "parts": [*parts, {"part_number": 3, "etag": wrong["ETag"]}]}
        error = (await call(api, "POST", _root(run_id) + "/uploads/complete", 400, json=bad))["error"]
        assert (
            error["field"] == "parts.2" and "999 bytes" in error["message"] and "aborted" in error["message"]
        )
        uploads = await s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
        assert not uploads.get("Uploads"), "the upload with a part of the wrong size was aborted"
    assert await listing(api, run_id) == []


async def test_part_numbers_beyond_the_layout_are_400(api: TestClient) -> None:
    run_id = await new_run(api)
    [item] = await plan(api, run_id, {"ckpt.bin": 2 * PART_SIZE + 1000})
    body = {"path": "ckpt.bin", "upload_id": item["multipart"]["upload_id"], "part_numbers": [3, 4]}
    error = (await call(api, "POST", _root(run_id) + "/uploads/parts", 400, json=body))["error"]
    assert error["field"] == "part_numbers.1" and "3 parts" in error["message"], error
    for numbers in ([0], [10_001], [-1], ["x"]):
        response = await api.post(_root(run_id) + "/uploads/parts", json={**body, "part_numbers": numbers})
        error = (await response.json())["error"]
        assert response.status in (400, 422) and error["field"] == "part_numbers.0", (numbers, error)
    other = {"path": "other.bin", "upload_id": item["multipart"]["upload_id"], "part_numbers": [1]}
    assert (await call(api, "POST", _root(run_id) + "/uploads/parts", 404, json=other))["error"][
        "field"
    ] == "upload_id", "an upload id only works with the path it was started for"


async def test_sizes_out_of_range_are_400(api: TestClient) -> None:
    run_id = await new_run(api)
    for size in (-1, 5 * 1024**4 + 1, 10**30, 1.5):
        response = await api.post(
            _root(run_id) + "/uploads", json={"files": [{"path": "x.bin", "size": size}]}
        )
        error = (await response.json())["error"]
        assert response.status in (400, 422) and error["field"].startswith("files.0.size"), (size, error)


async def test_one_plan_hands_out_a_bounded_number_of_part_urls(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    """Signing is CPU work on the event loop: 30 huge files must not cost 3,000 signatures at once."""
    run_id = await new_run(api)
    uploads = await plan(api, run_id, {f"shard-{i:02d}.bin": 300 * PART_SIZE for i in range(30)})
    counts = [len(u["multipart"]["parts"]) for u in uploads]
    assert sum(counts) <= PLAN_PART_URLS and min(counts) >= 1, counts
    last = uploads[-1]
    body = {"path": last["path"], "upload_id": last["multipart"]["upload_id"], "part_numbers": [300]}
    assert [
        p["part_number"]
        for p in (await call(api, "POST", _root(run_id) + "/uploads/parts", json=body))["parts"]
    ] == [300]
    assert (await call(api, "DELETE", _root(run_id)))["aborted_uploads"] == 30


@pytest.mark.parametrize("store_kind", ["s3"], indirect=True)
async def test_a_forged_s3_page_token_is_never_a_storage_failure(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    """AWS refuses an unknown continuation token (400 InvalidArgument), which is the client's fault, not a
    503; SeaweedFS just answers an empty page. Either way: no 5xx."""
    run_id = await new_run(api)
    await upload(api, http, run_id, {"a.txt": b"a", "b.txt": b"b"})
    for endpoint in ("", "/download"):
        params = {"page_token": encode_token("not-a-token-storage-issued")}
        response = await api.get(_root(run_id) + endpoint, params=params)
        body = await response.json()
        assert response.status in (200, 400), body
        assert response.status == 200 or body["error"]["field"] == "page_token", body


async def test_paging_through_tricky_names_sees_every_file_once(
    store_kind: str, api: TestClient, http: aiohttp.ClientSession
) -> None:
    """'a-c' sorts before 'a/b' in S3's key order ('-' < '/'): the local store's bounded walk skips
    whole folders by that order, so a mistake would lose or repeat files between pages."""
    run_id = await new_run(api)
    names = ["a/b.txt", "a-c.txt", "a.txt", "a0/x/y.txt", "a/z/z.txt", "ab", "a/bb/c.txt"]
    await upload(api, http, run_id, {n: n.encode() for n in names})
    paged, token = [], None
    while True:
        page = await download(api, run_id, max_results=1, **({"page_token": token} if token else {}))
        paged += [f["path"] for f in page["files"]]
        if not (token := page["next_page_token"]):
            break
    assert sorted(paged) == sorted(names) and len(paged) == len(names), "every file once"
    level: list[str] = []
    token = None
    while True:
        query = {"max_results": 2, **({"page_token": token} if token else {})}
        body = await call(api, "GET", _root(run_id), params=query)
        level += [f["path"] for f in body["files"]]
        if not (token := body["next_page_token"]):
            break
    assert sorted(level) == ["a", "a-c.txt", "a.txt", "a0", "ab"] and len(level) == 5
    if store_kind == "local":
        # S3's order (byte order of keys, a folder counting as 'name/'); SeaweedFS lists its own way.
        assert paged == sorted(names)
        assert level == ["a-c.txt", "a.txt", "a", "a0", "ab"], "a folder sorts as its path plus '/'"


# --- 3. the local store keeps the event loop free ----------------------------------------------------

_FS_CALLS = frozenset(
    {"stat", "lstat", "fstat", "scandir", "listdir", "open", "mkdir", "makedirs", "rename", "replace"}
    | {"unlink", "remove", "rmdir", "access", "chmod", "utime", "statvfs", "read", "write", "readinto"}
)


@pytest.fixture
def loop_filesystem_calls() -> Iterator[list[str]]:
    """Filesystem calls the artifact code makes on this (the event loop's) thread while the fixture
    lives: C-level calls seen by a profile hook, kept when artifact code is on the stack."""
    seen: list[str] = []

    def is_fs(fn: Any) -> bool:
        if not isinstance(fn, types.BuiltinFunctionType) or fn.__name__ not in _FS_CALLS:
            return False
        owner = getattr(fn, "__self__", None)
        if isinstance(owner, types.ModuleType):
            return owner.__name__ in ("posix", "_io", "io")
        return isinstance(owner, io.FileIO | io.BufferedReader | io.BufferedWriter | io.BufferedRandom)

    def hook(frame: types.FrameType, event: str, arg: Any) -> None:
        if event != "c_call" or not is_fs(arg):
            return
        caller: types.FrameType | None = frame
        for _ in range(12):
            if caller is None:
                return
            if caller.f_code.co_filename.startswith(ARTIFACT_CODE):
                seen.append(f"{arg.__name__} from {caller.f_code.co_name} ({caller.f_lineno})")
                return
            caller = caller.f_back

    sys.setprofile(hook)
    try:
        yield seen
    finally:
        sys.setprofile(None)


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
async def test_local_store_makes_no_filesystem_call_on_the_event_loop(
    make_client: MakeClient, http: aiohttp.ClientSession, loop_filesystem_calls: list[str]
) -> None:
    api = await make_client()
    loop_filesystem_calls.clear()  # app start-up is not under test
    run_id = await new_run(api)
    await upload(api, http, run_id, {"notes.txt": b"hello " * 100, "d/e/f.bin": b"f"})
    size = 2 * PART_SIZE + 1000
    [item] = await plan(api, run_id, {"big.bin": size})
    upload_id = item["multipart"]["upload_id"]
    body = {"path": "big.bin", "upload_id": upload_id, "part_numbers": [1, 2, 3]}
    urls = (await call(api, "POST", _root(run_id) + "/uploads/parts", json=body))["parts"]
    block = os.urandom(PART_SIZE)
    await put(http, urls[0]["url"], block)  # uploaded twice: the second replaces the first
    etags = [
        await put(http, urls[0]["url"], block),
        await put(http, urls[1]["url"], block),
        await put(http, urls[2]["url"], b"x" * 1000),
    ]
    parts = [{"part_number": n, "etag": e} for n, e in enumerate(etags, 1)]
    done = {"path": "big.bin", "upload_id": upload_id, "parts": parts}
    assert (await call(api, "POST", _root(run_id) + "/uploads/complete", json=done))["file_size"] == size
    [other] = await plan(api, run_id, {"dropped.bin": size})
    abort = {"path": "dropped.bin", "upload_id": other["multipart"]["upload_id"]}
    await call(api, "POST", _root(run_id) + "/uploads/abort", json=abort)
    assert len(await listing(api, run_id)) == 3
    assert len(await listing(api, run_id, "d")) == 1
    files = (await download(api, run_id))["files"]
    assert len(files) == 3
    assert await get(http, next(f["url"] for f in files if f["path"] == "notes.txt")) == b"hello " * 100
    page = await api.get(f"/runs/{run_id}", params={"view": "notes.txt"})
    assert page.status == 200 and "hello hello" in await page.text()
    await call(api, "GET", _root(run_id) + "/download", 404, params={"path": "nope"})
    assert (await call(api, "DELETE", _root(run_id)))["deleted_files"] == 3
    assert loop_filesystem_calls == [], "filesystem calls on the event loop:\n" + "\n".join(
        dict.fromkeys(loop_filesystem_calls)
    )


async def _worst_healthz(api: TestClient, busy: asyncio.Task[Any]) -> float:
    """The slowest /healthz answer (seconds) while `busy` runs; at least a few probes."""
    worst, probes = 0.0, 0
    while not busy.done() or probes < 3:
        start = time.perf_counter()
        response = await api.get("/healthz")
        assert response.status == 200
        worst = max(worst, time.perf_counter() - start)
        probes += 1
        await asyncio.sleep(0.005)
    await busy
    return worst


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
async def test_healthz_answers_promptly_while_a_big_tree_is_purged(
    api: TestClient, make_settings: Settle
) -> None:
    experiment_id = await new_experiment(api)
    runs = [await new_run(api, experiment_id) for _ in range(4)]
    root = Path(make_settings().artifact_root.removeprefix("file://"))

    def grow(run_id: str) -> None:
        for d in range(20):
            folder = root / experiment_id / run_id / "artifacts" / f"shard-{d:02d}"
            folder.mkdir(parents=True)
            for i in range(100):
                os.close(os.open(folder / f"{i:03d}.bin", os.O_CREAT | os.O_WRONLY, 0o644))

    await asyncio.gather(*(asyncio.to_thread(grow, r) for r in runs))
    purge = asyncio.create_task(call(api, "DELETE", f"/api/v1/experiments/{experiment_id}/artifacts"))
    worst = await _worst_healthz(api, purge)
    assert purge.result() == {"deleted_files": 8_000, "aborted_uploads": 0}
    assert worst < 0.25, f"/healthz took {worst * 1000:.0f} ms while 8,000 files were purged"


@pytest.mark.parametrize("store_kind", ["local"], indirect=True)
async def test_healthz_answers_promptly_during_a_large_local_upload(
    api: TestClient, http: aiohttp.ClientSession
) -> None:
    run_id = await new_run(api)
    size = 6 * PART_SIZE
    [item] = await plan(api, run_id, {"weights.bin": size})
    block = os.urandom(PART_SIZE)

    async def send() -> None:
        parts = await asyncio.gather(*(put(http, p["url"], block) for p in item["multipart"]["parts"]))
        body = {
            "path": "weights.bin",
            "upload_id": item["multipart"]["upload_id"],
            "parts": [{"part_number": n, "etag": e} for n, e in enumerate(parts, 1)],
        }
        await call(api, "POST", _root(run_id) + "/uploads/complete", json=body)

    worst = await _worst_healthz(api, asyncio.create_task(send()))
    assert await listing(api, run_id) == [("weights.bin", False, size)]
    assert worst < 0.25, f"/healthz took {worst * 1000:.0f} ms during a {size // MiB} MiB upload"
