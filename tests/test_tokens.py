"""Forged page tokens and signed-URL parameters: the client holds them, so they are untrusted input.

Whatever a client sends back instead of a token this service issued — another search's token, a number
too big for a bigint, a list where a number goes, a cursor of the wrong length, bytes that are not
base64 or not JSON — is a 400 naming `page_token`, never a 500 from Postgres. A signed URL whose
signature is not exactly ours, in any alphabet, is a 403; a malformed number in it a 400 naming it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from aiohttp.test_utils import TestClient

from kiseki_server.app import create_app
from kiseki_server.config import Settings
from tests.helpers import call, new_experiment, new_run

HEX = "0123456789abcdef" * 2
BIG = 2**63  # one past the largest bigint


def raw(data: bytes) -> str:
    """A token made of arbitrary bytes (what a forger controls: the JSON text itself)."""
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(*key: object) -> str:
    return raw(orjson.dumps(list(key)))


def unpack(token: str) -> list[Any]:
    data: list[Any] = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    return data


NOT_TOKENS = {
    "not-base64": "not a token!",
    "non-ascii": "é",
    "truncated-base64": "a",
    "not-json": raw(b"not json"),
    "not-utf8": raw(b"\xff\xfe[1]"),
    "object": raw(b'{"0": 1}'),
    "bare-number": raw(b"7"),
    "null": raw(b"null"),
    "empty-list": forged(),
    "lone-surrogate": raw(b'["\\ud800"]'),
}


async def refusals(
    client: TestClient, method: str, path: str, tokens: dict[str, str], **kwargs: Any
) -> list[str]:
    """How each forged token fared where it should have been a 400 naming page_token (empty: all were).
    `kwargs["params"]` or `kwargs["json"]` gets the token; one test tries many tokens on one database."""
    wrong = []
    for name, token in tokens.items():
        if "json" in kwargs:
            sent = {"json": {**kwargs["json"], "page_token": token}}
        else:
            sent = {"params": {**kwargs.get("params", {}), "page_token": token}}
        response = await client.request(method, path, **sent)
        body = await response.json()
        error = body.get("error", {})
        if (
            response.status != 400
            or error.get("field") != "page_token"
            or error["code"] != "INVALID_PARAMETER_VALUE"
        ):
            wrong.append(f"{name}: {response.status} {body}")
    return wrong


# -- the simple keyset tokens of listings ------------------------------------------------------------


async def test_experiment_list_rejects_forged_tokens(client: TestClient) -> None:
    tokens = {
        **NOT_TOKENS,
        "int64-overflow": raw(f"[{BIG}]".encode()),
        "uint64-max": raw(f"[{2**64 - 1}]".encode()),
        "int64-underflow": raw(f"[{-BIG - 1}]".encode()),
        "bool": forged(True),
        "string": forged("5"),
        "none": forged(None),
        "list": forged([5]),
        "float": forged(5.5),
        "too-long": forged(5, 5),
    }
    await new_experiment(client)
    assert not await refusals(client, "GET", "/api/v1/experiments", tokens)


async def test_run_list_rejects_forged_tokens(client: TestClient) -> None:
    tokens = {
        **NOT_TOKENS,
        "int64-overflow": forged(BIG, HEX),
        "bool": forged(True, HEX),
        "string-time": forged("1", HEX),
        "int-id": forged(1, 5),
        "none-id": forged(1, None),
        "list-id": forged(1, [HEX]),
        "not-hex-id": forged(1, "zz"),
        "nul-id": forged(1, HEX + "\x00"),
        "too-short": forged(1),
    }
    experiment_id = await new_experiment(client)
    await new_run(client, experiment_id)
    assert not await refusals(client, "GET", f"/api/v1/experiments/{experiment_id}/runs", tokens)


async def test_metric_history_rejects_forged_tokens(client: TestClient) -> None:
    tokens = {
        **NOT_TOKENS,
        "step-overflow": forged(BIG, 0, 0),
        "timestamp-overflow": forged(0, BIG, 0),
        "seen-overflow": forged(0, 0, BIG),
        "string": forged(0, "0", 0),
        "none": forged(0, 0, None),
        "too-short": forged(0, 0),
    }
    run_id = await new_run(client)
    points = {"metrics": [{"key": "m", "value": 1.0, "step": s, "timestamp": 1} for s in range(3)]}
    await call(client, "POST", f"/api/v1/runs/{run_id}/batch", json=points)
    path = f"/api/v1/runs/{run_id}/metrics/history"
    assert not await refusals(client, "GET", path, tokens, params={"key": "m", "max_results": "1"})


# -- search cursors ----------------------------------------------------------------------------------


async def run_search_token(client: TestClient, order_by: list[str]) -> tuple[dict[str, Any], list[Any]]:
    """The body of a run search over three runs, and its real next_page_token decoded as [fingerprint,
    segment, cursor]."""
    experiment_id = await new_experiment(client)
    for i in range(3):
        run_id = await new_run(client, experiment_id)
        batch = {"metrics": [{"key": "m", "value": float(i)}], "tags": [{"key": "t", "value": f"v{i}"}]}
        await call(client, "POST", f"/api/v1/runs/{run_id}/batch", json=batch)
    body = {"experiment_ids": [experiment_id], "order_by": order_by, "max_results": 1}
    token = (await call(client, "POST", "/api/v1/runs/search", json=body))["next_page_token"]
    assert token, "three runs, a page of one: there must be a next page"
    return body, unpack(token)


CURSORS: dict[str, dict[str, Any]] = {
    # [value as text, run id]
    "metrics.m DESC": {
        "int-id": ["1.0", 5],
        "0x-id": ["1.0", "0x" + HEX[:30]],
        "braced-id": ["1.0", "{" + HEX[:30] + "}"],
        "upper-id": ["1.0", HEX.upper()],
        "nul-id": ["1.0", HEX[:31] + "\x00"],
        "none-id": ["1.0", None],
        "float-not-text": [1.0, HEX],
        "nan": ["NaN", HEX],
        "not-a-number": ["one", HEX],
        "too-short": ["1.0"],
        "too-long": ["1.0", HEX, 0],
        "object": {"a": 1},
    },
    # [value, run id]
    "tags.t": {
        "nul-text": ["a\x00b", HEX],
        "list-text": [["v1"], HEX],
        "none-text": [None, HEX],
    },
    # [start_time, class of tags.t, its value, run id]
    "start_time, tags.t": {
        "int64-overflow": [BIG, 0, "v1", HEX],
        "bool-time": [True, 0, "v1", HEX],
        "unknown-class": [1, 3, "v1", HEX],
        "bool-class": [1, True, "v1", HEX],
        "value-under-missing-class": [1, 2, "v1", HEX],
    },
}


@pytest.mark.parametrize("order_by", list(CURSORS))
async def test_run_search_rejects_forged_cursors(client: TestClient, order_by: str) -> None:
    body, (fingerprint, segment, _) = await run_search_token(client, order_by.split(", "))
    tokens = {name: forged(fingerprint, segment, cursor) for name, cursor in CURSORS[order_by].items()}
    assert not await refusals(client, "POST", "/api/v1/runs/search", tokens, json=body)


async def test_run_search_rejects_forged_token_frames(client: TestClient) -> None:
    body, (fingerprint, segment, cursor) = await run_search_token(client, ["metrics.m DESC"])
    frames: dict[str, list[Any]] = {
        "segment-overflow": [fingerprint, BIG, cursor],
        "segment-bool": [fingerprint, True, cursor],
        "segment-negative": [fingerprint, -1, cursor],
        "segment-unknown": [fingerprint, 7, cursor],
        "segment-string": [fingerprint, "0", cursor],
        "another-search": ["0" * 12, segment, cursor],
        "fingerprint-none": [None, segment, cursor],
        "cursor-none": [fingerprint, segment, None],
        "cursor-string": [fingerprint, segment, "cursor"],
        "too-short": [fingerprint, segment],
    }
    tokens = {**NOT_TOKENS, **{name: forged(*frame) for name, frame in frames.items()}}
    assert not await refusals(client, "POST", "/api/v1/runs/search", tokens, json=body)
    assert not await refusals(client, "POST", "/api/v1/experiments/search", NOT_TOKENS, json={})


async def test_experiment_search_rejects_forged_ids(client: TestClient) -> None:
    """Experiments sort by their bigint id last: a run's hex id or an oversized number there is forged."""
    for i in range(3):
        await new_experiment(client, f"e{i}")
    first = await call(client, "POST", "/api/v1/experiments/search", json={"max_results": 1})
    fingerprint, segment, cursor = unpack(first["next_page_token"])
    assert isinstance(cursor[-1], int), cursor
    ids: dict[str, object] = {
        "hex": HEX,
        "overflow": BIG,
        "bool": True,
        "text": "5",
        "none": None,
        "float": 1.5,
    }
    tokens = {name: forged(fingerprint, segment, [*cursor[:-1], v]) for name, v in ids.items()}
    assert not await refusals(client, "POST", "/api/v1/experiments/search", tokens, json={"max_results": 1})


async def test_genuine_tokens_still_page_through(client: TestClient) -> None:
    """The checks refuse only forgeries: following real tokens visits every run once."""
    body, _ = await run_search_token(client, ["start_time", "tags.t"])
    seen: list[str] = []
    token = None
    for _ in range(5):
        page = await call(client, "POST", "/api/v1/runs/search", json={**body, "page_token": token})
        seen += [r["info"]["run_id"] for r in page["runs"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert len(seen) == len(set(seen)) == 3, seen


# -- the local store's signed URLs -------------------------------------------------------------------


@pytest.fixture
async def local_api(aiohttp_client: Any, database_url: str, tmp_path: Path) -> TestClient:
    """The app with the local artifact store, whose signed URLs point back at this service."""
    settings = Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        default_artifact_root=(tmp_path / "artifacts").as_uri(),
        db_pool_min_size=1,
        db_pool_max_size=4,
    )
    client: TestClient = await aiohttp_client(create_app(settings))
    return client


async def signed_urls(client: TestClient) -> dict[str, tuple[str, dict[str, str]]]:
    """A real PUT URL (already used once) and GET URL of one file, as (path, query) pairs."""
    run_id = await new_run(client)
    root = f"/api/v1/runs/{run_id}/artifacts"
    plan = await call(client, "POST", root + "/uploads", json={"files": [{"path": "a/b.txt", "size": 2}]})
    put_url = plan["uploads"][0]["url"]
    response = await client.put(_path(put_url), data=b"hi")
    assert response.status == 200, await response.text()
    (item,) = (await call(client, "GET", root + "/download", params={"path": "a/b.txt"}))["files"]
    get_url = item["url"]
    assert (await (await client.get(_path(get_url))).read()) == b"hi"
    return {
        "PUT": (urlsplit(put_url).path, dict(parse_qsl(urlsplit(put_url).query))),
        "GET": (urlsplit(get_url).path, dict(parse_qsl(urlsplit(get_url).query))),
    }


def _path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_forged_signatures_are_403(local_api: TestClient) -> None:
    urls = await signed_urls(local_api)
    wrong = []
    for method, (path, query) in urls.items():
        for signature in ("é" * 43, "签名", "", "A" * 43, "A" * 5000, query["signature"][:-1]):
            response = await local_api.request(
                method, path, params={**query, "signature": signature}, data=b"hi"
            )
            body = await response.json()
            if response.status != 403 or body["error"]["code"] != "PERMISSION_DENIED":
                wrong.append(f"{method} {signature[:10]!r}: {response.status} {body}")
    assert not wrong


MALFORMED = [
    ("GET", "expires", "9" * 25),
    ("GET", "expires", str(2**64)),
    ("GET", "expires", "-1"),
    ("GET", "expires", "+5"),
    ("GET", "expires", "١٢٣"),
    ("GET", "expires", "1e9"),
    ("GET", "expires", "9" * 5000),
    ("PUT", "size", str(2**64)),
    ("PUT", "size", "-2"),
    ("PUT", "part_number", "9" * 30),
    ("PUT", "part_number", "0"),
]


async def test_malformed_signed_numbers_are_400(local_api: TestClient) -> None:
    urls = await signed_urls(local_api)
    wrong = []
    for method, name, value in MALFORMED:
        path, query = urls[method]
        response = await local_api.request(method, path, params={**query, name: value}, data=b"hi")
        body = await response.json()
        if response.status != 400 or body["error"]["field"] != name:
            wrong.append(f"{method} {name}={value[:30]!r}: {response.status} {body}")
    for name in ("expires", "signature"):
        path, query = urls["GET"]
        response = await local_api.get(path, params={k: v for k, v in query.items() if k != name})
        body = await response.json()
        if response.status != 400 or body["error"]["field"] != name:
            wrong.append(f"without {name}: {response.status} {body}")
    assert not wrong
