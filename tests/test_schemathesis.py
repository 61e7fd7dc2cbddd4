"""Schemathesis against the service's own OpenAPI document: generated requests, a real server.

For every operation of /api/v1/openapi.json, a bounded, derandomized number of requests drawn from the
document (valid ones, and invalid ones for the 5xx hunt) go to a real `kiseki server` process on its own
database with the local artifact store. Any 5xx, any response that breaks the documented schema, status
or content type fails; so does a request the document calls valid that the server refuses with 400/422
("positive data acceptance"), except where the document cannot say what is valid (the filter language,
opaque tokens, cross-field rules: see UNSPEAKABLE), whose refusals must then name exactly that field.

Path ids are drawn from the document, so most would name nothing; half of them are swapped for the id of
a seeded experiment / run so that requests reach the code behind the 404.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import HealthCheck
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from kiseki_server import openapi
from kiseki_server.app import ROUTES
from tests.conftest import create_database
from tests.servers import kiseki_server

MAX_EXAMPLES = 10
"""Per operation and mode: about 30 operations, 2 modes, 10 each: some 600 requests, well under a minute."""

schema = schemathesis.openapi.from_dict(openapi.build(ROUTES))
schema.config.update(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=MAX_EXAMPLES,
    deterministic=True,
    no_shrink=True,
    database="none",
)
schema.config.phases.update(phases=["examples", "fuzzing"])

UNSPEAKABLE: dict[str, str] = {
    "filter": "",
    "order_by": "",
    "page_token": "",
    "upload_id": "",
    "metric_columns": "entries but 'values' has",
    "params": "is given twice with different values",
    "tags": "is given twice with different values",
    "parts": "in order",
    "files": "is also files",
}
"""Refusals of valid-looking data the document cannot prevent, as (first part of the field named: a
fragment of the message). Opaque tokens are valid only if this service issued them; the filter
language is a grammar; a batch's columns must be of equal length and its keys not clash; the parts
of a multipart upload must be numbered 1, 2, 3… in order, and no two files of an upload share a path."""


@dataclass(frozen=True)
class Live:
    url: str
    experiment_id: str
    run_id: str


@pytest.fixture(scope="module")
def live(postgres_url: str, template_url: str) -> Iterator[Live]:
    """A `kiseki server` on a database of its own, seeded with an experiment and a run with a file."""
    database_url = create_database(postgres_url, "kiseki_test_schemathesis")
    data_dir = tempfile.mkdtemp(prefix="kiseki-schemathesis-", dir="/tmp")
    try:
        with kiseki_server(
            "--database-url", database_url, "--data-dir", data_dir, "--shutdown-timeout", "2"
        ) as (url, _):
            api = f"{url}/api/v1"
            experiment = requests.post(f"{api}/experiments", json={"name": "seed"}, timeout=10).json()
            run = requests.post(
                f"{api}/runs", json={"experiment_id": experiment["experiment_id"]}, timeout=10
            ).json()
            run_id = run["info"]["run_id"]
            batch = {"metrics": [{"key": "m", "value": 1.0}], "params": [{"key": "p", "value": "v"}]}
            requests.post(f"{api}/runs/{run_id}/batch", json=batch, timeout=10).raise_for_status()
            yield Live(url, experiment["experiment_id"], run_id)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_the_served_document_is_the_one_tested(live: Live) -> None:
    served = requests.get(f"{live.url}/api/v1/openapi.json", timeout=10).json()
    assert served == openapi.build(ROUTES), "the served OpenAPI document differs from the route table's"


def _seeded(case: Any, live: Live) -> None:
    """Point about half the generated cases at the seeded experiment and run (chosen by a hash of the
    drawn id, so the run stays deterministic)."""
    for name, value in (("experiment_id", live.experiment_id), ("run_id", live.run_id)):
        drawn = (case.path_parameters or {}).get(name)
        if drawn is not None and hashlib.blake2b(str(drawn).encode()).digest()[0] % 2:
            case.path_parameters[name] = value


def positive_data_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request valid by the document is not refused as invalid (400/422), unless it is a field the
    document cannot judge and the refusal names it."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    if response.status_code not in (400, 422):
        return None
    error = response.json().get("error") or {}
    why = UNSPEAKABLE.get((error.get("field") or "").split(".")[0])
    if why is not None and why in error.get("message", ""):
        return None
    raise AssertionError(
        f"valid by the OpenAPI document but refused: {response.status_code} {response.text[:500]}"
    )


@schema.parametrize()
def test_api(case: Any, live: Live) -> None:
    _seeded(case, live)
    case.call_and_validate(
        base_url=live.url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            positive_data_accepted,
        ],
        timeout=30,
    )
