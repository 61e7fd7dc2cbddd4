"""POST /api/v1/runs/search and /api/v1/experiments/search against a few hundred awkward runs.

The fixture (seeded once per module by COPY) has missing keys, NaN and ±inf, many equal values, equal
start times, unicode keys and keys that need quoting. Each filter's expected result comes from a plain
Python predicate over the same data, so a row of the table reads as the filter's meaning.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from kiseki.models import Run
from kiseki_server.app import create_app
from kiseki_server.config import Settings
from tests.conftest import TEMPLATE, with_database
from tests.helpers import call, new_experiment

N_RUNS = 300
T0 = 1_700_000_000_000
STATUSES = ["RUNNING", "FINISHED", "FAILED", "KILLED", "SCHEDULED"]
MODELS = ["bert-base", "bert-large", "gpt2", "O'Reilly", "50%", "Bert_Tiny"]
LRS = ["0.1", "0.01", "1e-3", "abc", " 2 ", "-5", "NaN"]
NOTES = ['say "hi"', "it's", "back\\slash", "line\nbreak", "ünï", "", "100% sure"]


@dataclass
class R:
    """One fixture run, as the oracle sees it."""

    run_id: str
    i: int
    experiment: int
    run_name: str
    status: str
    start_time: int
    end_time: int | None
    deleted: bool
    parent_run_id: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def make_runs(experiment_ids: list[int]) -> list[R]:
    runs: list[R] = []
    for i in range(N_RUNS):
        run = R(
            run_id=hashlib.md5(f"run {i}".encode()).hexdigest(),  # ids not in insertion order
            i=i,
            experiment=experiment_ids[i % 3],
            run_name=f"ラン-{i}" if i % 50 == 0 else f"run-{i:03d}",
            status=STATUSES[i % 5],
            start_time=T0 + (i // 2) * 1000,  # pairs of equal start times
            end_time=None if i % 4 == 0 else T0 + i * 1000 + 500,
            deleted=i % 25 == 7,
            parent_run_id=None,
        )
        if i % 10 == 5:
            run.parent_run_id = runs[i - 5].run_id
        if i % 7 != 0:
            run.metrics["acc"] = (
                math.nan
                if i % 11 == 0
                else math.inf
                if i % 97 == 1
                else -math.inf
                if i % 89 == 2
                else (i % 20) / 20
            )
        if i % 5 != 0:
            run.metrics["loss"] = round(i * 0.01, 2)
        run.metrics["val/acc"] = i / N_RUNS
        run.metrics["精度"] = float(i % 3)
        if i % 2 == 0:
            run.metrics["a b"] = float(i % 4)
        if i % 9 != 0:
            run.params["lr"] = LRS[i % len(LRS)]
        if i % 13 != 0:
            run.params["model"] = MODELS[i % len(MODELS)]
        run.params["batch size"] = str((i % 4) * 16)
        run.params["ключ"] = "значение" if i % 2 else "другое"
        if i % 3 != 2:
            run.tags["team"] = "nlp" if i % 2 else "vision"
        run.tags["note"] = NOTES[i % len(NOTES)]
        if i % 6 == 0:
            run.tags["x.y-z"] = f"v{i % 5}"
        runs.append(run)
    return runs


@dataclass
class Fixture:
    url: str
    experiment_ids: list[str]
    runs: list[R]
    by_id: dict[str, R]
    text_rank: dict[str, int]
    """Rank of every text value under the database's collation (text sorts as Postgres sorts it)."""


@pytest.fixture(scope="module")
async def fixture(postgres_url: str, template_url: str) -> AsyncIterator[Fixture]:
    name = f"kiseki_search_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    url = with_database(postgres_url, name)
    conn = await asyncpg.connect(url)
    try:
        ids = [
            await conn.fetchval(
                "INSERT INTO experiments (name, creation_time, last_update_time) VALUES ($1, 0, 0) "
                "RETURNING experiment_id",
                exp,
            )
            for exp in ("alpha", "beta", "gamma")
        ]
        runs = make_runs(ids)
        await conn.copy_records_to_table(
            "runs",
            records=[
                (
                    uuid.UUID(r.run_id),
                    r.experiment,
                    r.run_name,
                    r.status,
                    r.start_time,
                    r.end_time,
                    "deleted" if r.deleted else "active",
                    uuid.UUID(r.parent_run_id) if r.parent_run_id else None,
                    f"s3://b/{r.run_id}",
                )
                for r in runs
            ],
            columns=[
                "run_id",
                "experiment_id",
                "run_name",
                "status",
                "start_time",
                "end_time",
                "lifecycle_stage",
                "parent_run_id",
                "artifact_uri",
            ],
        )
        for table, attr in (("params", "params"), ("tags", "tags")):
            records = [(uuid.UUID(r.run_id), k, v) for r in runs for k, v in getattr(r, attr).items()]
            await conn.copy_records_to_table(table, records=records, columns=["run_id", "key", "value"])
        await conn.copy_records_to_table(
            "latest_metrics",
            records=[(uuid.UUID(r.run_id), k, v, 0, T0) for r in runs for k, v in r.metrics.items()],
            columns=["run_id", "key", "value", "step", "timestamp"],
        )
        texts = sorted(
            {v for r in runs for v in (r.run_name, r.status, *r.params.values(), *r.tags.values())}
        )
        ranked = await conn.fetch(
            "SELECT v, dense_rank() OVER (ORDER BY v) AS rank FROM unnest($1::text[]) v", texts
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    yield Fixture(
        url=url,
        experiment_ids=[str(i) for i in ids],
        runs=runs,
        by_id={r.run_id: r for r in runs},
        text_rank={row["v"]: row["rank"] for row in ranked},
    )
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.close()


@pytest.fixture
async def seeded(aiohttp_client: Any, fixture: Fixture, tmp_path: Path) -> TestClient:
    """A client on the module's seeded database (read-only tests share it)."""
    settings = Settings(database_url=fixture.url, data_dir=tmp_path, db_pool_min_size=1, db_pool_max_size=4)
    client: TestClient = await aiohttp_client(create_app(settings))
    return client


async def search(client: TestClient, status: int = 200, **body: Any) -> Any:
    return await call(client, "POST", "/api/v1/runs/search", status, json=body)


async def search_all(client: TestClient, page: int = 50_000, **body: Any) -> list[dict[str, Any]]:
    """Every run of a search, following page tokens."""
    runs: list[dict[str, Any]] = []
    token = None
    for _ in range(10_000):
        result = await search(client, max_results=page, page_token=token, **body)
        runs += result["runs"]
        token = result["next_page_token"]
        if token is None:
            return runs
    raise AssertionError("paging did not end")


# -- filters: (filter, which fixture runs match) --------------------------------------------------------

Oracle = Callable[[R], bool]


def metric(key: str, test: Callable[[float], bool]) -> Oracle:
    return lambda r: key in r.metrics and test(r.metrics[key])


def param(key: str, test: Callable[[str], bool], *, kind: str = "params") -> Oracle:
    return lambda r: key in getattr(r, kind) and test(getattr(r, kind)[key])


def as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def numeric_param(key: str, test: Callable[[float], bool]) -> Oracle:
    def oracle(r: R) -> bool:
        value = as_number(r.params.get(key, "x"))
        return value is not None and test(value)

    return oracle


def ordered(test: Callable[[float], bool]) -> Callable[[float], bool]:
    """IEEE: NaN satisfies no ordered comparison."""
    return lambda v: not math.isnan(v) and test(v)


FILTERS: list[tuple[str, Oracle]] = [
    ("", lambda r: True),
    ("   ", lambda r: True),
    ("metrics.acc > 0.5", metric("acc", ordered(lambda v: v > 0.5))),
    ("metrics.acc >= 0.5", metric("acc", ordered(lambda v: v >= 0.5))),
    ("metrics.acc < 0.25", metric("acc", ordered(lambda v: v < 0.25))),
    ("metrics.acc <= 0", metric("acc", ordered(lambda v: v <= 0))),
    ("metrics.acc = 0.5", metric("acc", lambda v: v == 0.5)),
    ("metrics.acc != 0.5", metric("acc", lambda v: v != 0.5)),
    ("metrics.acc = NaN", metric("acc", math.isnan)),
    ("metrics.acc != nan", metric("acc", lambda v: not math.isnan(v))),
    ("metrics.acc = inf", metric("acc", lambda v: v == math.inf)),
    ("metrics.acc = -Infinity", metric("acc", lambda v: v == -math.inf)),
    ("metrics.acc > 1e0", metric("acc", ordered(lambda v: v > 1))),
    ("metrics.acc > -inf", metric("acc", ordered(lambda v: v > -math.inf))),
    ("metrics.acc IS NULL", lambda r: "acc" not in r.metrics),
    ("metrics.acc is not null", lambda r: "acc" in r.metrics),
    ("metrics.acc IN (0.1, 0.2, NaN)", metric("acc", lambda v: v in (0.1, 0.2) or math.isnan(v))),
    ("metrics.acc NOT IN (0.1, 0.2)", metric("acc", lambda v: v not in (0.1, 0.2))),
    ("metric.loss < 0.1", metric("loss", lambda v: v < 0.1)),
    ("metrics.`val/acc` >= .99", metric("val/acc", lambda v: v >= 0.99)),
    ("metrics.val/acc >= 9.9E-1", metric("val/acc", lambda v: v >= 0.99)),
    ('metrics."精度" = 2', metric("精度", lambda v: v == 2)),
    (
        "metrics.精度 = 2 AND metrics.`a b` = 2",
        lambda r: r.metrics["精度"] == 2 and r.metrics.get("a b") == 2,
    ),
    ("params.model = 'gpt2'", param("model", lambda v: v == "gpt2")),
    ('params.model = "gpt2"', param("model", lambda v: v == "gpt2")),
    ("params.model != 'gpt2'", param("model", lambda v: v != "gpt2")),
    ("NOT params.model = 'gpt2'", lambda r: r.params.get("model") != "gpt2"),
    ("params.model = 'O''Reilly'", param("model", lambda v: v == "O'Reilly")),
    ("params.model = 'O\\'Reilly'", param("model", lambda v: v == "O'Reilly")),
    ("params.model LIKE 'bert%'", param("model", lambda v: v.startswith("bert"))),
    ("params.model ILIKE 'bert%'", param("model", lambda v: v.lower().startswith("bert"))),
    ("params.model NOT LIKE 'bert%'", param("model", lambda v: not v.startswith("bert"))),
    ("params.model LIKE '50\\%'", param("model", lambda v: v == "50%")),
    ("params.model LIKE 'b_rt-%'", param("model", lambda v: v.startswith("bert-"))),
    ("params.model IN ('gpt2', 'bert-base')", param("model", lambda v: v in ("gpt2", "bert-base"))),
    ("params.model NOT IN ('gpt2', 'bert-base')", param("model", lambda v: v not in ("gpt2", "bert-base"))),
    ("params.model IS NULL", lambda r: "model" not in r.params),
    ("params.`batch size` = '16'", param("batch size", lambda v: v == "16")),
    ('params."batch size" = 16', param("batch size", lambda v: v == "16")),
    ("params.ключ = 'значение'", param("ключ", lambda v: v == "значение")),
    # A number against a param compares numerically; text that is no number never matches.
    ("params.lr > 0.005", numeric_param("lr", ordered(lambda v: v > 0.005))),
    ("params.lr = 0.001", numeric_param("lr", lambda v: v == 0.001)),
    ("params.lr = '1e-3'", param("lr", lambda v: v == "1e-3")),  # text: '0.001' would not match
    ("params.lr < 0", numeric_param("lr", ordered(lambda v: v < 0))),
    ("params.lr = NaN", numeric_param("lr", math.isnan)),
    ("params.lr IN (2, 0.1)", numeric_param("lr", lambda v: v in (2, 0.1))),
    ("tags.team = 'nlp'", param("team", lambda v: v == "nlp", kind="tags")),
    ("tag.team != 'nlp'", param("team", lambda v: v != "nlp", kind="tags")),
    ("tags.team IS NULL", lambda r: "team" not in r.tags),
    ("tags.note = ''", param("note", lambda v: v == "", kind="tags")),
    ("tags.note = 'say \"hi\"'", param("note", lambda v: v == 'say "hi"', kind="tags")),
    ('tags.note = "say \\"hi\\""', param("note", lambda v: v == 'say "hi"', kind="tags")),
    ("tags.note = 'back\\\\slash'", param("note", lambda v: v == "back\\slash", kind="tags")),
    ("tags.note = 'line\\nbreak'", param("note", lambda v: v == "line\nbreak", kind="tags")),
    ("tags.note ILIKE 'ÜNÏ'", param("note", lambda v: v == "ünï", kind="tags")),
    ("tags.`x.y-z` = 'v0'", param("x.y-z", lambda v: v == "v0", kind="tags")),
    ("tags.x.y-z = 'v0'", param("x.y-z", lambda v: v == "v0", kind="tags")),
    ("status = 'FINISHED'", lambda r: r.status == "FINISHED"),
    ("attributes.status IN ('FAILED', 'KILLED')", lambda r: r.status in ("FAILED", "KILLED")),
    ("attribute.status != 'RUNNING'", lambda r: r.status != "RUNNING"),
    ("run.run_name LIKE 'run-00%'", lambda r: r.run_name.startswith("run-00")),
    ("attr.run_name = 'ラン-50'", lambda r: r.run_name == "ラン-50"),
    ("run_name ILIKE 'RUN-1_0'", lambda r: r.run_name in {f"run-1{d}0" for d in "0123456789"}),
    ("start_time = 1700000010000", lambda r: r.start_time == T0 + 10_000),
    ("start_time >= 1.70000014e12", lambda r: r.start_time >= T0 + 140_000),
    ("end_time IS NULL", lambda r: r.end_time is None),
    ("end_time > 1700000100000", lambda r: r.end_time is not None and r.end_time > T0 + 100_000),
    ("NOT end_time > 1700000100000", lambda r: r.end_time is None or r.end_time <= T0 + 100_000),
    ("parent_run_id IS NOT NULL", lambda r: r.parent_run_id is not None),
    ("artifact_uri LIKE 's3://b/0%'", lambda r: r.run_id.startswith("0")),
    ("run_id LIKE '0%'", lambda r: r.run_id.startswith("0")),
    # Boolean structure: precedence (AND binds tighter than OR), parentheses, NOT, keywords in any case.
    (
        "metrics.acc > 0.8 OR params.model = 'gpt2' AND tags.team = 'nlp'",
        lambda r: (
            FILTER_ORACLE["metrics.acc > 0.8"](r)
            or (r.params.get("model") == "gpt2" and r.tags.get("team") == "nlp")
        ),
    ),
    (
        "(metrics.acc > 0.8 OR params.model = 'gpt2') and tags.team = 'nlp'",
        lambda r: (
            (FILTER_ORACLE["metrics.acc > 0.8"](r) or r.params.get("model") == "gpt2")
            and r.tags.get("team") == "nlp"
        ),
    ),
    ("not (metrics.acc > 0.5)", lambda r: not FILTER_ORACLE["metrics.acc > 0.5"](r)),
    ("NOT NOT metrics.acc > 0.5", metric("acc", ordered(lambda v: v > 0.5))),
    (
        "metrics.loss < 0.5 AnD NOT (tags.team IS NULL OR status IN ('RUNNING'))",
        lambda r: r.metrics.get("loss", 9) < 0.5 and "team" in r.tags and r.status != "RUNNING",
    ),
]
FILTER_ORACLE: dict[str, Oracle] = {
    "metrics.acc > 0.8": metric("acc", ordered(lambda v: v > 0.8)),
    "metrics.acc > 0.5": metric("acc", ordered(lambda v: v > 0.5)),
}


@pytest.mark.parametrize(("filter_text", "oracle"), FILTERS, ids=[f for f, _ in FILTERS])
async def test_filter_matches_exactly_the_runs_it_describes(
    seeded: TestClient, fixture: Fixture, filter_text: str, oracle: Oracle
) -> None:
    runs = await search_all(seeded, filter=filter_text, view_type="all")
    got = [r["info"]["run_id"] for r in runs]
    expected = {r.run_id for r in fixture.runs if oracle(r)}
    assert len(got) == len(set(got)), "a run came back twice"
    missing = sorted(fixture.by_id[i].i for i in expected - set(got))
    extra = sorted(fixture.by_id[i].i for i in set(got) - expected)
    assert not missing and not extra, f"{filter_text!r}: missing runs {missing}, unexpected runs {extra}"


def test_the_fixture_is_awkward_enough(fixture: Fixture) -> None:
    """Each filter table row must mean something: no row may match nothing or everything by accident."""
    for text, oracle in FILTERS:
        n = sum(oracle(r) for r in fixture.runs)
        assert text.strip() == "" or 0 < n < N_RUNS, f"{text!r} matches {n} of {N_RUNS} fixture runs"


# -- errors: (filter, column, words the message must contain) ----------------------------------------

ERRORS: list[tuple[str, int, str]] = [
    ("metrics.acc", 12, "expected a comparison operator after 'metrics.acc' at column 12"),
    ("metrics.acc 0.5", 13, "expected a comparison operator"),
    ("metrics.acc >", 14, "expected a value"),
    ("metrics.acc > 0.5 AND", 22, "expected an identifier"),
    ("metrics.acc > 0.5 params.x = 'a'", 19, "expected AND, OR or the end"),
    ("(metrics.acc > 0.5", 19, "expected AND, OR or ')'"),
    ("metrics.acc > 0.5)", 18, "expected AND, OR or the end"),
    ("params.model = 'gpt2", 16, "unterminated string"),
    ("params.`model = 'x'", 8, "unterminated quoted key"),
    ("params.'model' = 'x'", 8, "backticks or double quotes"),
    ("foo.bar = 1", 1, "unknown prefix 'foo.'"),
    ("metrics. = 1", 9, "expected a key"),
    ("params.model IN 'a'", 17, "expected '('"),
    ("params.model IN ()", 18, "expected a value"),
    ("params.model IN ('a' 'b')", 22, "expected ',' or ')'"),
    ("params.model = NULL", 16, "IS NULL"),
    ("params.model IS 'x'", 17, "expected NULL or NOT NULL"),
    ("params.model NOT = 'x'", 18, "expected IN, LIKE or ILIKE"),
    ("params.model LIKE 5", 19, "expected a quoted pattern"),
    ("metrics.acc > 0.5 ; DROP TABLE runs", 19, "unexpected character ';'"),
    ("metrics.acc = 'high'", 15, "is a number"),
    ("metrics.acc LIKE 'a%'", 18, "is a number"),
    ("metrics.acc < NaN", 15, "NaN is unordered"),
    ("params.model > 'a'", 16, "compares numbers"),
    ("params.lr IN ('a', 1)", 14, "mixes strings and numbers"),
    ("colour = 'red'", 1, "unknown run attribute 'colour'"),
    ("status = 'DONE'", 10, "is one of RUNNING"),
    ("start_time > 'yesterday'", 14, "compared with numbers"),
    ("start_time > 1.5", 14, "whole numbers"),
    ("run_name = 5", 12, "quote the value"),
    ("run_id = 'not-a-run'", 10, "run ids"),
    ("run_id < 'abc'", 10, "does not apply"),
    ("`acc` > 1", 1, "backticks quote a key"),
]


@pytest.mark.parametrize(("filter_text", "column", "words"), ERRORS, ids=[e[0] for e in ERRORS])
async def test_bad_filter_is_a_400_naming_the_column(
    seeded: TestClient, filter_text: str, column: int, words: str
) -> None:
    body = await search(seeded, 400, filter=filter_text)
    error = body["error"]
    assert error["field"] == "filter"
    assert error["code"] == "INVALID_PARAMETER_VALUE"
    assert words in error["message"], error["message"]
    assert f"column {column}" in error["message"], error["message"]


async def test_injection_attempts_are_just_values(seeded: TestClient) -> None:
    for text in (
        "params.model = 'x''; DROP TABLE runs; --'",
        "params.`model'); DROP TABLE runs; --` = 'x'",
        'tags."team\\" = 1 OR 1=1 --" = \'x\'',
    ):
        assert (await search(seeded, filter=text))["runs"] == []
    assert len(await search_all(seeded, view_type="all")) == N_RUNS


# -- ordering ----------------------------------------------------------------------------------------


def sort_value(fixture: Fixture, r: R, key: str) -> tuple[int, Any]:
    """(class, value): values, then NaN, then missing; text by the database's collation."""
    prefix, _, name = key.partition(".")
    name = name.strip("`")
    if prefix == "metrics":
        if name not in r.metrics:
            return (2, None)
        v = r.metrics[name]
        return (1, None) if math.isnan(v) else (0, v)
    if prefix in ("params", "tags"):
        values = r.params if prefix == "params" else r.tags
        return (0, fixture.text_rank[values[name]]) if name in values else (2, None)
    v = getattr(r, key)
    if v is None:
        return (2, None)
    return (0, fixture.text_rank[v]) if isinstance(v, str) else (0, v)


def expected_order(fixture: Fixture, runs: list[R], order_by: list[str]) -> list[str]:
    keys = [(re.sub(r"\s+(ASC|DESC)$", "", c, flags=re.I), c.upper().endswith(" DESC")) for c in order_by]
    keys = keys or [("start_time", True)]
    ordered_runs = sorted(runs, key=lambda r: r.run_id, reverse=keys[-1][1])
    for key, desc in reversed(keys):  # stable sorts, least significant key first
        present = [r for r in ordered_runs if sort_value(fixture, r, key)[0] == 0]
        rest = [r for r in ordered_runs if sort_value(fixture, r, key)[0] != 0]
        present.sort(key=lambda r: sort_value(fixture, r, key)[1], reverse=desc)
        rest.sort(key=lambda r: sort_value(fixture, r, key)[0])
        ordered_runs = present + rest
    return [r.run_id for r in ordered_runs]


ORDERS: list[list[str]] = [
    [],
    ["metrics.acc DESC"],
    ["metrics.acc"],
    ["metrics.acc ASC", "metrics.loss DESC"],
    ["params.model", "metrics.loss DESC"],
    ["tags.team DESC", "start_time"],
    ["end_time"],
    ["end_time DESC", "metrics.acc"],
    ["run_name DESC"],
    ["status", "params.lr DESC", "metrics.`a b`"],
    ["metrics.`a b` DESC", "tags.team", "metrics.acc DESC"],
    ["start_time ASC"],
]


@pytest.mark.parametrize("order_by", ORDERS, ids=[",".join(o) or "default" for o in ORDERS])
@pytest.mark.parametrize("page", [7, 1000])
async def test_order_by_is_total_and_pages_resume_exactly(
    seeded: TestClient, fixture: Fixture, order_by: list[str], page: int
) -> None:
    runs = await search_all(seeded, page=page, order_by=order_by)
    got = [r["info"]["run_id"] for r in runs]
    active = [r for r in fixture.runs if not r.deleted]
    expected = expected_order(fixture, active, order_by)
    first_difference = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), None)
    assert got == expected, (
        f"order {order_by}, pages of {page}: {len(got)} runs vs {len(expected)} expected; "
        f"first difference at position {first_difference}"
    )


FILTERED_ORDERS: list[tuple[str, list[str], Oracle]] = [
    (
        "metrics.acc > 0.5 and params.model LIKE 'bert%'",
        ["metrics.acc DESC"],
        lambda r: FILTER_ORACLE["metrics.acc > 0.5"](r) and r.params.get("model", "").startswith("bert"),
    ),
    # The filter's key is the order key: compiled against the joined row in each segment.
    ("metrics.acc != 0.5", ["metrics.acc DESC"], metric("acc", lambda v: v != 0.5)),
    (
        "metrics.acc = NaN OR metrics.acc IS NULL",
        ["metrics.acc"],
        lambda r: math.isnan(r.metrics.get("acc", math.nan)),
    ),
    (
        "NOT metrics.acc <= 0.5",
        ["metrics.acc", "run_name"],
        lambda r: not metric("acc", ordered(lambda v: v <= 0.5))(r),
    ),
    ("params.lr > 0", ["params.lr DESC"], numeric_param("lr", ordered(lambda v: v > 0))),
    (
        "tags.team IS NULL OR tags.team = 'nlp'",
        ["tags.team DESC", "metrics.loss"],
        lambda r: r.tags.get("team", "nlp") == "nlp",
    ),
    (
        "end_time IS NULL OR end_time > 1700000200000",
        ["end_time DESC"],
        lambda r: (r.end_time or T0 + 10**9) > T0 + 200_000,
    ),
]


@pytest.mark.parametrize(
    ("filter_text", "order_by", "oracle"), FILTERED_ORDERS, ids=[f[0] for f in FILTERED_ORDERS]
)
async def test_filter_and_order_together(
    seeded: TestClient, fixture: Fixture, filter_text: str, order_by: list[str], oracle: Oracle
) -> None:
    runs = await search_all(seeded, page=10, filter=filter_text, order_by=order_by)
    expected = expected_order(fixture, [r for r in fixture.runs if oracle(r) and not r.deleted], order_by)
    assert expected, "the case should match some runs"
    assert [r["info"]["run_id"] for r in runs] == expected


async def test_bad_order_by_names_the_clause(seeded: TestClient) -> None:
    body = await search(seeded, 400, order_by=["metrics.acc", "metrics.loss SIDEWAYS"])
    assert body["error"]["field"] == "order_by.1"
    assert "expected ASC, DESC" in body["error"]["message"]
    body = await search(seeded, 400, order_by=["colour"])
    assert body["error"]["field"] == "order_by.0"


# -- scope, view type, tokens, limits ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("view_type", "deleted"), [("active_only", {False}), ("deleted_only", {True}), ("all", {True, False})]
)
async def test_view_type(seeded: TestClient, fixture: Fixture, view_type: str, deleted: set[bool]) -> None:
    got = {r["info"]["run_id"] for r in await search_all(seeded, view_type=view_type)}
    assert got == {r.run_id for r in fixture.runs if r.deleted in deleted}


async def test_scope_one_several_or_all_experiments(seeded: TestClient, fixture: Fixture) -> None:
    alpha, beta, _ = fixture.experiment_ids
    for ids in ([alpha], [alpha, beta], None):
        body: dict[str, Any] = (
            {"view_type": "all"} if ids is None else {"view_type": "all", "experiment_ids": ids}
        )
        got = {r["info"]["run_id"] for r in await search_all(seeded, page=100, **body)}
        want = {r.run_id for r in fixture.runs if ids is None or str(r.experiment) in ids}
        assert got == want, f"scope {ids}"
    body = await search(seeded, 404, experiment_ids=[alpha, "999999"])
    assert body["error"]["field"] == "experiment_ids"
    body = await search(seeded, 422, experiment_ids=[])
    assert body["error"]["field"] == "experiment_ids"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_results": 50_001}, "max_results"),
        ({"max_results": 0}, "max_results"),
        ({"view_type": "some"}, "view_type"),
        ({"filter": "x" * 20_001}, "filter"),
        ({"order_by": ["start_time"] * 11}, "order_by"),
        ({"page_token": "garbage!"}, "page_token"),
        ({"page_token": "WyJhYmMiLDAsWzEsMl1d"}, "page_token"),
        ({"filter_string": "x"}, "filter_string"),
    ],
)
async def test_bad_requests_name_their_field(seeded: TestClient, body: dict[str, Any], field: str) -> None:
    response = await seeded.post("/api/v1/runs/search", json=body)
    error = (await response.json())["error"]
    assert response.status in (400, 422), error
    assert error["field"] == field, error


async def test_page_token_is_tied_to_its_search(seeded: TestClient) -> None:
    first = await search(seeded, max_results=5, filter="metrics.acc > 0.1", order_by=["metrics.acc DESC"])
    token = first["next_page_token"]
    assert token
    body = await search(seeded, 400, max_results=5, filter="metrics.acc > 0.2", page_token=token)
    assert "different search" in body["error"]["message"]
    # Same search, another page size: fine.
    await search(
        seeded, max_results=50, filter="metrics.acc > 0.1", order_by=["metrics.acc DESC"], page_token=token
    )


async def test_max_results_and_default_page(seeded: TestClient) -> None:
    assert len((await search(seeded, max_results=3))["runs"]) == 3
    full = await search(seeded, view_type="all")
    assert len(full["runs"]) == N_RUNS and full["next_page_token"] is None


async def test_results_carry_params_tags_and_latest_metrics(seeded: TestClient, fixture: Fixture) -> None:
    run = fixture.runs[22]
    (found,) = (await search(seeded, filter=f"run_id = '{run.run_id}'"))["runs"]
    assert found["data"]["params"] == run.params
    assert found["data"]["tags"] == run.tags
    metrics = Run.model_validate(found).data.metrics  # NaN travels as the string "NaN"
    assert {k: repr(v) for k, v in metrics.items()} == {k: repr(v) for k, v in run.metrics.items()}
    assert found["info"]["experiment_id"] == str(run.experiment)


# -- pagination under concurrent inserts (own database) ----------------------------------------------


@pytest.mark.parametrize("order_by", [[], ["metrics.m DESC"], ["params.p", "metrics.m"]])
async def test_paging_sees_every_run_once_while_runs_arrive(
    client: TestClient, conn: asyncpg.Connection, order_by: list[str]
) -> None:
    experiment_id = await new_experiment(client, "busy")
    rows = [(uuid.uuid4(), int(experiment_id), f"r{i}", "RUNNING", T0 + (i % 40) * 10) for i in range(400)]
    await conn.copy_records_to_table(
        "runs", records=rows, columns=["run_id", "experiment_id", "run_name", "status", "start_time"]
    )
    await conn.copy_records_to_table(
        "latest_metrics",
        records=[(r[0], "m", float(i % 17), 0, T0) for i, r in enumerate(rows) if i % 9],
        columns=["run_id", "key", "value", "step", "timestamp"],
    )
    await conn.copy_records_to_table(
        "params",
        records=[(r[0], "p", f"v{i % 5}") for i, r in enumerate(rows)],
        columns=["run_id", "key", "value"],
    )
    before = {r[0].hex for r in rows}
    stop = asyncio.Event()

    async def insert_runs() -> int:
        n = 0
        while not stop.is_set():
            body = {"experiment_id": experiment_id, "start_time": T0 + (n % 60) * 7}
            run = await call(client, "POST", "/api/v1/runs", 201, json=body)
            batch = {
                "metrics": [{"key": "m", "value": n % 23}],
                "params": [{"key": "p", "value": f"v{n % 7}"}],
            }
            await call(client, "POST", f"/api/v1/runs/{run['info']['run_id']}/batch", json=batch)
            n += 1
            await asyncio.sleep(0)
        return n

    writer = asyncio.create_task(insert_runs())
    seen: list[str] = []
    token = None
    while True:
        page = await search(
            client, experiment_ids=[experiment_id], order_by=order_by, max_results=13, page_token=token
        )
        seen += [r["info"]["run_id"] for r in page["runs"]]
        token = page["next_page_token"]
        await asyncio.sleep(0.005)  # let the writer in between pages
        if token is None:
            break
    stop.set()
    inserted = await writer
    assert inserted > 5, "the writer should have inserted runs while we paged"
    assert len(seen) == len(set(seen)), "a run was returned twice"
    assert before <= set(seen), f"{len(before - set(seen))} runs that existed throughout were skipped"


# -- experiments -------------------------------------------------------------------------------------


async def test_experiment_search(client: TestClient) -> None:
    made = {}
    for name, team in [
        ("bert-a", "nlp"),
        ("bert-b", "vision"),
        ("Bert-c", "nlp"),
        ("gpt", "nlp"),
        ("vit", None),
    ]:
        tags = {"team": team} if team else {}
        made[name] = (
            await call(client, "POST", "/api/v1/experiments", 201, json={"name": name, "tags": tags})
        )["experiment_id"]
    await call(client, "DELETE", f"/api/v1/experiments/{made['gpt']}")

    async def names(status: int = 200, **body: Any) -> Any:
        result = await call(client, "POST", "/api/v1/experiments/search", status, json=body)
        return [e["name"] for e in result["experiments"]] if status == 200 else result

    assert await names(filter="name LIKE 'bert%' AND tags.team = 'nlp'") == ["bert-a"]
    assert await names(filter="attributes.name ILIKE 'bert%'") == ["Bert-c", "bert-b", "bert-a"]
    assert await names(filter="tags.team IS NULL") == ["vit"]
    assert await names(filter="tags.team = 'nlp'", view_type="all") == ["gpt", "Bert-c", "bert-a"]
    assert await names(filter="tags.team = 'nlp'", view_type="deleted_only") == ["gpt"]
    assert await names(filter=f"experiment_id = {made['bert-b']}") == ["bert-b"]
    assert await names(filter="name LIKE 'bert-%'", order_by=["name DESC"]) == ["bert-b", "bert-a"]
    assert await names(order_by=["tags.team", "creation_time DESC"]) == ["Bert-c", "bert-a", "bert-b", "vit"]
    pages, token = [], None
    while True:
        result = await call(
            client, "POST", "/api/v1/experiments/search", json={"max_results": 2, "page_token": token}
        )
        pages.append([e["name"] for e in result["experiments"]])
        token = result["next_page_token"]
        if token is None:
            break
    assert [n for page in pages for n in page] == ["vit", "Bert-c", "bert-b", "bert-a"]
    error = (await names(400, filter="metrics.acc > 1"))["error"]
    assert error["field"] == "filter" and "experiments have no metrics" in error["message"]
    error = (await names(400, filter="status = 'x'"))["error"]
    assert "unknown experiment attribute 'status'" in error["message"]
