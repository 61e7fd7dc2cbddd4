"""The filter language without a database: parse trees, error positions, compiled SQL, page cursors."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiseki_server.errors import InvalidInput
from kiseki_server.search import ordering
from kiseki_server.search.ast import And, Comparison, FilterError, Identifier, IsNull, Not, Or, OrderKey
from kiseki_server.search.compiler import EXPERIMENTS, RUNS, Joined, Params, compile_filter
from kiseki_server.search.parser import MAX_COMPARISONS, MAX_DEPTH, parse_filter, parse_order_by


def ident(kind: str, key: str) -> tuple[str, str]:
    return (kind, key)


def shape(expr: object) -> object:
    """A parse tree without source positions, for comparing with expectations."""
    if isinstance(expr, And | Or):
        return (type(expr).__name__, *[shape(e) for e in expr.items])
    if isinstance(expr, Not):
        return ("Not", shape(expr.item))
    if isinstance(expr, IsNull):
        return (expr.ident.kind, expr.ident.key, "IS NOT NULL" if expr.negated else "IS NULL")
    assert isinstance(expr, Comparison)
    return (expr.ident.kind, expr.ident.key, expr.op, expr.value)


PARSES = [
    ("metrics.acc > 0.5", ("metric", "acc", ">", 0.5)),
    ("metric.acc>=1", ("metric", "acc", ">=", 1)),
    ("metrics.acc <> 1", ("metric", "acc", "!=", 1)),
    ("metrics.acc == 1", ("metric", "acc", "=", 1)),
    ("params.lr = '0.1'", ("param", "lr", "=", "0.1")),
    ('params.lr = "0.1"', ("param", "lr", "=", "0.1")),
    ("params.`learning rate` = 1e-3", ("param", "learning rate", "=", 0.001)),
    ("tags.\"a.b-c\" != 'x'", ("tag", "a.b-c", "!=", "x")),
    ("tags.a.b-c/d:e = 'x'", ("tag", "a.b-c/d:e", "=", "x")),
    ("tags.`a``b` = 'x'", ("tag", "a`b", "=", "x")),
    ("metrics.精度 < -2.5E+3", ("metric", "精度", "<", -2500.0)),
    ("attributes.status = 'FINISHED'", ("attribute", "status", "=", "FINISHED")),
    ("attribute.status = 'FINISHED'", ("attribute", "status", "=", "FINISHED")),
    ("attr.run_name LIKE 'a%'", ("attribute", "run_name", "LIKE", "a%")),
    ("run.run_name not ilike 'a%'", ("attribute", "run_name", "NOT ILIKE", "a%")),
    ("status IN ('A', \"B\")", ("attribute", "status", "IN", ("A", "B"))),
    ("start_time NOT IN (1, 2.5)", ("attribute", "start_time", "NOT IN", (1, 2.5))),
    ("params.x = 'it''s'", ("param", "x", "=", "it's")),
    ("params.x = 'it\\'s \\\"q\\\" \\\\ \\n\\t'", ("param", "x", "=", 'it\'s "q" \\ \n\t')),
    ("params.x LIKE '50\\%'", ("param", "x", "LIKE", "50\\%")),
    ("params.x = ''", ("param", "x", "=", "")),
    ("tags.t IS NULL", ("tag", "t", "IS NULL")),
    ("tags.t is not null", ("tag", "t", "IS NOT NULL")),
    ("METRICS.a = .5", ("metric", "a", "=", 0.5)),
    (
        "metrics.a = 1 AND metrics.b = 2 OR metrics.c = 3",
        ("Or", ("And", ("metric", "a", "=", 1), ("metric", "b", "=", 2)), ("metric", "c", "=", 3)),
    ),
    (
        "metrics.a = 1 AND (metrics.b = 2 OR NOT metrics.c = 3)",
        ("And", ("metric", "a", "=", 1), ("Or", ("metric", "b", "=", 2), ("Not", ("metric", "c", "=", 3)))),
    ),
]


@pytest.mark.parametrize(("text", "expected"), PARSES, ids=[p[0] for p in PARSES])
def test_parse(text: str, expected: object) -> None:
    assert shape(parse_filter(text)) == expected


@pytest.mark.parametrize(
    ("text", "check"),
    [
        ("NaN", math.isnan),
        ("nan", math.isnan),
        ("inf", lambda v: v == math.inf),
        ("+Infinity", lambda v: v == math.inf),
        ("-inf", lambda v: v == -math.inf),
        ("1e400", lambda v: v == math.inf),
        ("-0", lambda v: v == 0),
        ("12345678901234567890", lambda v: v == 12345678901234567890),
    ],
)
def test_number_literals(text: str, check: object) -> None:
    expr = parse_filter(f"metrics.m = {text}")
    assert isinstance(expr, Comparison)
    assert check(expr.value)  # type: ignore[operator]


def test_empty_filter_is_none() -> None:
    assert parse_filter("") is None
    assert parse_filter(" \n\t ") is None


ERRORS = [
    ("metrics.acc", 12, "expected a comparison operator after 'metrics.acc' at column 12"),
    ("metrics.acc ~ 1", 13, "unexpected character '~'"),
    ("metrics.acc > 1 AND (", 22, "expected an identifier"),
    ("metrics.acc > 1 OR", 19, "expected an identifier"),
    ("NOT", 4, "expected an identifier"),
    ("()", 2, "expected an identifier"),
    ("'x' = metrics.a", 1, "expected an identifier"),
    ("metrics.a = 1 2", 15, "expected AND, OR or the end of the filter"),
    ("metrics.a = 'x", 13, "unterminated string starting at column 13"),
    ('tags."a = 1', 6, "unterminated quoted key"),
    ("tags.`` = 1", 6, "empty key"),
    ("zzz.a = 1", 1, "unknown prefix 'zzz.'"),
    ("metrics.a IS NOT 1", 18, "expected NULL or NOT NULL"),
    ("metrics.a IN (1,", 17, "expected a value"),
    ("metrics.a IN (1 2)", 17, "expected ',' or ')'"),
    ("metrics.a = metrics.b", 13, "expected a value"),
]


@pytest.mark.parametrize(("text", "column", "words"), ERRORS, ids=[e[0] for e in ERRORS])
def test_syntax_errors_say_where_and_what(text: str, column: int, words: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert caught.value.column == column, caught.value.message
    assert words in caught.value.message
    assert caught.value.field == "filter"
    assert isinstance(caught.value, InvalidInput) and caught.value.status == 400


def test_nesting_and_size_are_bounded() -> None:
    with pytest.raises(FilterError, match="nests deeper"):
        parse_filter("(" * (MAX_DEPTH + 1) + "metrics.a = 1" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(FilterError, match="nests deeper"):
        parse_filter("NOT " * 10_000 + "metrics.a = 1")
    parse_filter("(" * (MAX_DEPTH - 1) + "metrics.a = 1" + ")" * (MAX_DEPTH - 1))
    with pytest.raises(FilterError, match="at most"):
        parse_filter(" OR ".join(["metrics.a = 1"] * (MAX_COMPARISONS + 1)))


def test_order_by() -> None:
    assert parse_order_by("metrics.acc") == OrderKey(Identifier("metric", "acc", "metrics.acc", 1), False)
    assert parse_order_by("params.`a b` desc").descending
    assert parse_order_by("  start_time   ASC ").ident.key == "start_time"
    with pytest.raises(FilterError) as caught:
        parse_order_by("metrics.acc DESC x", field="order_by.2")
    assert caught.value.field == "order_by.2" and caught.value.column == 18


# -- compilation ---------------------------------------------------------------------------------------


def compiled(text: str, entity: object = RUNS, known: object = None) -> tuple[object, list[object]]:
    params = Params()
    return compile_filter(parse_filter(text), entity, params, known), params.values  # type: ignore[arg-type]


def test_compiled_sql_is_parameterised() -> None:
    sql, values = compiled("params.model = 'gpt2' AND metrics.acc > 0.5 OR tags.`team name` IN ('a', 'b')")
    assert isinstance(sql, str)
    assert set(re.findall(r"\$(\d+)", sql)) == {str(i) for i in range(1, len(values) + 1)}
    assert sorted(map(str, values)) == sorted(
        map(str, ["gpt2", "model", 0.5, "acc", ["a", "b"], "team name"])
    )
    for text in ("gpt2", "team name", "'a'"):
        assert text not in sql


def test_known_keys_fold_to_constants() -> None:
    absent = {("metric", "acc"): None}
    assert compiled("metrics.acc > 0.5", known=absent)[0] is False
    assert compiled("metrics.acc IS NULL", known=absent)[0] is True
    assert compiled("metrics.acc > 0.5 OR metrics.acc IS NULL", known=absent)[0] is True
    assert compiled("NOT metrics.acc = 1 AND status = 'RUNNING'", known=absent)[0] == "r.status = $1::text"
    nan = {("metric", "acc"): Joined("o0", nan=True)}
    assert compiled("metrics.acc > 0.5", known=nan)[0] is False
    assert compiled("metrics.acc = NaN", known=nan)[0] is True
    assert compiled("metrics.acc != 1", known=nan)[0] is True
    assert compiled("metrics.acc IN (1, nan)", known=nan)[0] is True
    joined = {("metric", "acc"): Joined("o0")}
    sql, _ = compiled("metrics.acc > 0.5", known=joined)
    assert isinstance(sql, str) and sql.startswith("(o0.value > $1::float8") and "EXISTS" not in sql
    assert compiled("end_time IS NULL OR start_time IS NULL")[0] == "r.end_time IS NULL"
    assert compiled("start_time IS NOT NULL")[0] is True


def test_semantic_errors() -> None:
    with pytest.raises(FilterError, match="experiments have no metrics"):
        compiled("metrics.a = 1", EXPERIMENTS)
    with pytest.raises(FilterError, match="unknown experiment attribute 'status'"):
        compiled("status = 'RUNNING'", EXPERIMENTS)
    assert compiled("name LIKE 'bert%' AND tags.team = 'nlp'", EXPERIMENTS)[1] == ["bert%", "nlp", "team"]
    with pytest.raises(FilterError, match="out of range"):
        compiled("start_time > 99999999999999999999")
    with pytest.raises(FilterError, match="out of range"):
        compiled("metrics.a > " + "9" * 400)


# -- properties ----------------------------------------------------------------------------------------

FILTER_ALPHABET = st.sampled_from(
    [*"metricsparamtgsbu.`'\"\\()=!<>, -+eE019_ \t\nNOTANDORINLIKEISNUL精%", "AND", "OR", "NOT", "IN"]
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(FILTER_ALPHABET, max_size=40).map("".join)))
def test_arbitrary_text_never_crashes_the_parser_or_compiler(text: str) -> None:
    try:
        expr = parse_filter(text)
        compile_filter(expr, RUNS, Params())
        compile_filter(expr, EXPERIMENTS, Params())
    except FilterError as exc:
        error = exc
    else:
        return
    assert 1 <= error.column <= len(text) + 1
    assert f"column {error.column}" in error.message


MARK = "☃"
"""Never appears in compiled SQL, so finding it there would mean user text was spliced in."""

keys = st.text(min_size=0, max_size=12).map(lambda s: MARK + s)
strings = st.text(max_size=12).map(lambda s: s + MARK)


def quote_key(key: str) -> str:
    return "`" + key.replace("\\", "\\\\").replace("`", "``") + "`"


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


@st.composite
def comparisons(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["params.", "tags.", "metrics."]))
    key = quote_key(draw(keys))
    if prefix == "metrics.":
        number = draw(st.floats(allow_nan=False) | st.integers(-(10**6), 10**6))
        op = draw(st.sampled_from(["=", "!=", "<", "<=", ">", ">="]))
        return f"{prefix}{key} {op} {number!r}"
    op = draw(st.sampled_from(["=", "!=", "LIKE", "ILIKE", "NOT LIKE"]))
    return f"{prefix}{key} {op} {quote_string(draw(strings))}"


filters = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" AND ", " or "]), inner).map("".join),
        inner.map(lambda f: f"NOT ({f})"),
    ),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None, database=None)
@given(filters)
def test_compiled_sql_never_contains_user_text(text: str) -> None:
    params = Params()
    sql = compile_filter(parse_filter(text), RUNS, params)
    assert isinstance(sql, str)
    assert MARK not in sql
    assert any(isinstance(v, str) and MARK in v for v in params.values)


@settings(max_examples=100, deadline=None, database=None)
@given(keys, strings)
def test_quoting_round_trips(key: str, value: str) -> None:
    expr = parse_filter(f"params.{quote_key(key)} = {quote_string(value)}")
    assert isinstance(expr, Comparison)
    assert (expr.ident.key, expr.value) == (key, value)


# -- page cursors ----------------------------------------------------------------------------------------


def test_forged_cursors_are_400s() -> None:
    keys = ordering.resolve([parse_order_by("metrics.acc DESC"), parse_order_by("params.p")], RUNS)
    segment = ordering.segment_query(keys, "value", RUNS, Params())
    good = ["0.5", 0, "v", "a" * 32]
    assert ordering.check_cursor(good, segment.components) == [0.5, 0, "v", "a" * 32]
    for bad in (
        ["0.5", 0, "v"],
        ["nan", 0, "v", "a" * 32],
        ["x", 0, "v", "a" * 32],
        [0.5, 0, "v", "a" * 32],
        ["0.5", 7, "v", "a" * 32],
        ["0.5", 2, "v", "a" * 32],
        ["0.5", 0, "v", "z" * 32],
    ):
        with pytest.raises(InvalidInput) as caught:
            ordering.check_cursor(bad, segment.components)
        assert caught.value.field == "page_token"


def test_keyset_predicate_uses_a_row_comparison_when_directions_agree() -> None:
    keys = ordering.resolve([parse_order_by("metrics.acc DESC")], RUNS)
    params = Params()
    segment = ordering.segment_query(keys, "value", RUNS, params)
    after = ordering.after(segment.components, [0.5, "a" * 32], params, "uuid")
    assert after == "(o0.value, r.run_id) < ($2::float8, $3::uuid)"
    keys = ordering.resolve([parse_order_by("metrics.acc DESC"), parse_order_by("start_time")], RUNS)
    params = Params()
    segment = ordering.segment_query(keys, "value", RUNS, params)
    after = ordering.after(segment.components, [0.5, 10, "a" * 32], params, "uuid")
    assert after.startswith("o0.value <= $2::float8 AND ")
