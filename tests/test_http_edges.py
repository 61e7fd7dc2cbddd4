"""HTTP edges: methods no route knows, bodies over the limit, and clients too slow to send a request
(slowloris) — the last ones against a real `kiseki server` through raw sockets."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import create_database
from tests.servers import kiseki_server

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
LIMIT = 1024 * 1024


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "LOCK", "PURGE", "MKCOL"])
async def test_non_standard_methods_get_a_json_405_with_allow(client, method: str, caplog) -> None:
    with caplog.at_level(logging.INFO):
        response = await client.request(method, "/api/v1/experiments")
        body = await response.json()
    assert response.status == 405, body
    assert body["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert method in body["error"]["message"]
    assert set(response.headers["Allow"].split(",")) == {"GET", "POST"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "no traceback for a 405"

    metrics = await (await client.get("/metrics")).text()
    methods = {
        s.labels["method"]
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "kiseki_http_requests_total"
    }
    assert "OTHER" in methods and method not in methods, "unknown methods share one label"


async def test_a_405_outside_the_api_keeps_allow(client) -> None:
    response = await client.request("PROPFIND", "/healthz")
    assert response.status == 405
    assert "GET" in response.headers["Allow"]


# --- a real server, for what happens on the socket --------------------------------------------------------


@pytest.fixture(scope="module")
def server(postgres_url: str, template_url: str) -> Iterator[int]:
    database_url = create_database(postgres_url, "kiseki_test_http_edges")
    data_dir = tempfile.mkdtemp(prefix="kiseki-edges-", dir="/tmp")
    env = {
        "KISEKI_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "KISEKI_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
        "KISEKI_MAX_REQUEST_BYTES": str(LIMIT),
    }
    with kiseki_server("--database-url", database_url, "--data-dir", data_dir, env=env) as (url, _):
        yield int(url.rsplit(":", 1)[1])
    shutil.rmtree(data_dir, ignore_errors=True)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_until_closed(sock: socket.socket, *, within: float) -> tuple[bytes, bool]:
    """What the server sent within `within` seconds, and whether it closed the connection by then."""
    received = b""
    deadline = time.monotonic() + within
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, True
        received += chunk
    return received, False


def read_response(sock: socket.socket, *, within: float) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body) read within `within` seconds; fails the test otherwise."""
    data = b""
    deadline = time.monotonic() + within
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            pytest.fail(f"no response within {within} s (got {data[:200]!r})")
        assert chunk, f"connection closed without a response (got {data[:200]!r})"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, body


def post_head(length: int, *extra: str) -> bytes:
    lines = [
        "POST /api/v1/experiments HTTP/1.1",
        "Host: localhost",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(server: int) -> None:
    with connect(server) as sock:
        sock.sendall(post_head(200 * 1024 * 1024) + b"x" * 65536)
        started = time.monotonic()
        status, headers, body = read_response(sock, within=3)
        assert status == 413, body
        assert time.monotonic() - started < 2, "the 413 comes at once, not after reading the limit"
        assert json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"
        assert headers.get("connection", "").lower() == "close", "no need to send the rest"


def test_expect_continue_over_the_limit_gets_413_instead_of_100(server: int) -> None:
    with connect(server) as sock:
        sock.sendall(post_head(200 * 1024 * 1024, "Expect: 100-continue"))
        status, _, body = read_response(sock, within=3)
        assert status == 413, body
    with connect(server) as sock:
        sock.sendall(post_head(2, "Expect: 100-continue"))
        status, _, _ = read_response(sock, within=3)
        assert status == 100, "a body within the limit still gets its go-ahead"
        sock.sendall(b"{}")
        status, _, body = read_response(sock, within=3)
        assert status == 422, body


def test_a_chunked_body_over_the_limit_is_still_cut_off(server: int) -> None:
    head = (
        b"POST /api/v1/experiments HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 65536
    with connect(server) as sock:
        sock.sendall(head)
        for _ in range(LIMIT // len(chunk) + 4):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        sock.sendall(b"0\r\n\r\n")
        status, _, body = read_response(sock, within=5)
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_client_that_sends_nothing_is_dropped(server: int) -> None:
    with connect(server) as sock:
        _, closed = read_until_closed(sock, within=HEADER_TIMEOUT + 3)
    assert closed, f"a silent connection is closed after the {HEADER_TIMEOUT} s header timeout"


def test_headers_sent_a_byte_at_a_time_are_dropped(server: int) -> None:
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for byte in b"X-Slow: " + b"a" * 40:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            _, closed = read_until_closed(sock, within=0.25)
            if closed:
                break
        assert closed, "a head trickling in is cut off"
        assert time.monotonic() - started < HEADER_TIMEOUT + 3


def test_a_stalled_body_is_dropped(server: int) -> None:
    with connect(server) as sock:
        sock.sendall(post_head(100) + b'{"name": ')
        received, closed = read_until_closed(sock, within=BODY_TIMEOUT + 3)
    assert closed, f"a body stalled for over {BODY_TIMEOUT} s ends the connection (got {received!r})"


def test_idle_keep_alive_connections_outlive_the_header_timeout(server: int) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(request)
        assert read_response(sock, within=3)[0] == 200
        time.sleep(HEADER_TIMEOUT * 2.5)  # idle between requests is keep-alive, not a slow head
        sock.sendall(request)
        assert read_response(sock, within=3)[0] == 200


def test_urls_the_service_hands_out_are_never_too_long_for_it(tracking_uri: str, tmp_path) -> None:
    """A 1,000-character non-ASCII artifact path makes a ~12 KB signed local-store URL (percent-encoded):
    longer than aiohttp's default request line, so the service must accept longer ones."""
    import kiseki

    path = "/".join(["€" * 60] * 16)[:1000].rstrip("/")
    source = tmp_path / "source"
    (source / path).parent.mkdir(parents=True)
    (source / path).write_bytes(b"long path")
    client = kiseki.Client(tracking_uri)
    try:
        run = client.create_run(client.get_or_create_experiment("long-artifact-paths").experiment_id)
        client.log_artifacts(run.info.run_id, source)
        listed = client.list_artifacts(run.info.run_id, path.rsplit("/", 1)[0])
        assert [f.path for f in listed] == [path]
        local = client.download_artifacts(run.info.run_id, path, tmp_path / "back")
    finally:
        client.close()
    assert Path(local).read_bytes() == b"long path"
