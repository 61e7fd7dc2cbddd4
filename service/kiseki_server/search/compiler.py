"""Filter AST → a parameterised SQL predicate over runs (`r`) or experiments (`e`).

Keys and values only ever become `$n` parameters; the SQL text is assembled from fixed fragments chosen
by the AST's shape. Every predicate is two-valued (never SQL NULL), so `NOT` means what it says.

A predicate may fold to a constant: the store skips a query whose filter is `False`. `Known` tells the
compiler which keys are joined already (compare the joined row directly) or known to be absent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kiseki.models import INT64_MAX, INT64_MIN, RunStatus
from kiseki_server.search.ast import (
    And,
    Comparison,
    Expr,
    FilterError,
    Identifier,
    IsNull,
    Kind,
    Not,
    Or,
    Scalar,
)

Pred = str | bool
"""SQL text, or a constant the compiler could decide."""


@dataclass(frozen=True, slots=True)
class Attribute:
    sql: str
    type: Literal["int", "text", "uuid"]
    nullable: bool = False
    choices: tuple[str, ...] = ()
    """The only values `=`/`IN` may name (a typo is an error rather than an empty result)."""
    digit_strings: bool = False
    """Accept '12' as well as 12 (experiment ids travel as strings in the API)."""


@dataclass(frozen=True, slots=True)
class KeyedTable:
    """A (owner, key, value) table: latest_metrics, params, tags, experiment_tags."""

    table: str
    owner: str
    numeric: bool


@dataclass(frozen=True, slots=True)
class Entity:
    noun: str
    alias: str
    id_sql: str
    id_type: str
    attributes: Mapping[str, Attribute]
    keyed: Mapping[Kind, KeyedTable]


RUNS = Entity(
    noun="run",
    alias="r",
    id_sql="r.run_id",
    id_type="uuid",
    attributes={
        "run_id": Attribute("r.run_id", "uuid"),
        "run_name": Attribute("r.run_name", "text"),
        "status": Attribute("r.status", "text", choices=tuple(s.value for s in RunStatus)),
        "start_time": Attribute("r.start_time", "int"),
        "end_time": Attribute("r.end_time", "int", nullable=True),
        "experiment_id": Attribute("r.experiment_id", "int", digit_strings=True),
        "parent_run_id": Attribute("r.parent_run_id", "uuid", nullable=True),
        "artifact_uri": Attribute("r.artifact_uri", "text"),
    },
    keyed={
        "metric": KeyedTable("latest_metrics", "run_id", numeric=True),
        "param": KeyedTable("params", "run_id", numeric=False),
        "tag": KeyedTable("tags", "run_id", numeric=False),
    },
)

EXPERIMENTS = Entity(
    noun="experiment",
    alias="e",
    id_sql="e.experiment_id",
    id_type="bigint",
    attributes={
        "name": Attribute("e.name", "text"),
        "experiment_id": Attribute("e.experiment_id", "int", digit_strings=True),
        "artifact_location": Attribute("e.artifact_location", "text"),
        "creation_time": Attribute("e.creation_time", "int"),
        "last_update_time": Attribute("e.last_update_time", "int"),
    },
    keyed={"tag": KeyedTable("experiment_tags", "experiment_id", numeric=False)},
)


@dataclass(frozen=True, slots=True)
class Joined:
    """The key's row is joined as `alias` (so it exists); `nan`: its value is known to be NaN."""

    alias: str
    nan: bool = False


Known = Mapping[tuple[Kind, str], Joined | None]
"""Keys whose presence a query already fixed: joined, or (None) known not to be logged."""


@dataclass
class Params:
    """The `$n` parameters of one statement."""

    values: list[object] = field(default_factory=list)

    def add(self, value: object, cast: str | None = None) -> str:
        self.values.append(value)
        return f"${len(self.values)}::{cast}" if cast else f"${len(self.values)}"


def _error(message: str, column: int) -> FilterError:
    return FilterError(f"{message} (column {column})", column=column)


# -- boolean folding ---------------------------------------------------------------------------------


def _and(items: list[Pred]) -> Pred:
    if any(item is False for item in items):
        return False
    sql = [item for item in items if item is not True]
    return True if not sql else sql[0] if len(sql) == 1 else "(" + " AND ".join(map(str, sql)) + ")"


def _or(items: list[Pred]) -> Pred:
    if any(item is True for item in items):
        return True
    sql = [item for item in items if item is not False]
    return False if not sql else sql[0] if len(sql) == 1 else "(" + " OR ".join(map(str, sql)) + ")"


def _not(item: Pred) -> Pred:
    return (not item) if isinstance(item, bool) else f"NOT {item}"


# -- values ------------------------------------------------------------------------------------------


def _values(c: Comparison) -> tuple[Scalar, ...]:
    return c.value if isinstance(c.value, tuple) else (c.value,)


def _as_float(value: Scalar, column: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise _error(f"the number {value} is out of range", column) from None


def _all_numbers(c: Comparison) -> bool:
    """True for numbers, False for strings; a list mixing them is an error."""
    values = _values(c)
    numbers = [not isinstance(v, str) for v in values]
    if all(numbers):
        return True
    if any(numbers):
        raise _error(f"the list for {c.ident.text} mixes strings and numbers", c.column)
    return False


def _float_predicate(expr: str, c: Comparison, params: Params) -> Pred:
    """IEEE-like semantics on a float8 expression: NaN is unordered, `= NaN` / `!= NaN` test for it."""
    values = [_as_float(v, c.column) for v in _values(c)]
    if c.op in ("IN", "NOT IN"):
        array = params.add(values, "float8[]")
        return f"{expr} = ANY({array})" if c.op == "IN" else f"{expr} <> ALL({array})"
    value = values[0]
    if math.isnan(value):
        if c.op not in ("=", "!="):
            raise _error(f"NaN is unordered: compare {c.ident.text} with NaN using = or !=", c.column)
        return f"{expr} {'=' if c.op == '=' else '<>'} 'NaN'::float8"
    sql = f"{expr} {'<>' if c.op == '!=' else c.op} {params.add(value, 'float8')}"
    # Postgres orders NaN above every number; IEEE (and users) say a NaN is not greater than 0.5.
    return f"({sql} AND {expr} < 'NaN'::float8)" if c.op in (">", ">=") else sql


def _nan_decides(c: Comparison) -> bool:
    """The comparison's result for a value known to be NaN (the NaN segment of an ordering)."""
    values = [_as_float(v, c.column) for v in _values(c)]
    if c.op in ("=", "IN"):
        return any(math.isnan(v) for v in values)
    if c.op in ("!=", "NOT IN"):
        return not any(math.isnan(v) for v in values)
    if math.isnan(values[0]):
        raise _error(f"NaN is unordered: compare {c.ident.text} with NaN using = or !=", c.column)
    return False


def _text_predicate(expr: str, c: Comparison, params: Params) -> Pred:
    if c.op in ("<", "<=", ">", ">="):
        raise _error(
            f"'{c.op}' compares numbers; {c.ident.text} is compared with a string "
            "(use =, !=, LIKE, ILIKE or IN, or write the value as a number)",
            c.column,
        )
    if c.op in ("IN", "NOT IN"):
        array = params.add([str(v) for v in _values(c)], "text[]")
        return f"{expr} = ANY({array})" if c.op == "IN" else f"{expr} <> ALL({array})"
    op = {"=": "=", "!=": "<>"}.get(c.op, c.op)
    return f"{expr} {op} {params.add(c.value, 'text')}"


def _keyed_value(c: Comparison, expr: str, table: KeyedTable, params: Params) -> Pred:
    numbers = _all_numbers(c)
    if table.numeric:
        if not numbers:
            raise _error(f"{c.ident.text} is a number: compare it with a number, not a string", c.column)
        return _float_predicate(expr, c, params)
    if not numbers:
        return _text_predicate(expr, c, params)
    # A number against a text value compares numerically; text that is not a number never matches.
    as_float = f"CASE WHEN pg_input_is_valid({expr}, 'float8') THEN {expr}::float8 END"
    pred = _float_predicate(as_float, c, params)
    return f"({pred}) IS TRUE" if isinstance(pred, str) else pred


# -- attributes --------------------------------------------------------------------------------------


def attribute(entity: Entity, ident: Identifier, *, field: str = "filter") -> Attribute:
    found = entity.attributes.get(ident.key.lower())
    if found is None:
        names = ", ".join(entity.attributes)
        raise FilterError(
            f"unknown {entity.noun} attribute '{ident.key}' at column {ident.column}; "
            f"{entity.noun}s have {names}",
            column=ident.column,
            field=field,
        )
    return found


def _int_value(value: Scalar, attr_name: str, digit_strings: bool, column: int) -> int:
    if isinstance(value, str):
        if digit_strings and value.isascii() and value.isdigit() and len(value) <= 18:
            return int(value)
        raise _error(f"{attr_name} is compared with numbers, not strings", column)
    if isinstance(value, float):
        if not value.is_integer():
            raise _error(f"{attr_name} holds whole numbers; {value} is not one", column)
        value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _error(f"the number {value} is out of range for {attr_name}", column)
    return value


def _uuid_value(value: Scalar, attr_name: str, column: int) -> str:
    try:
        return uuid.UUID(str(value)).hex
    except ValueError:
        raise _error(f"{attr_name} is compared with run ids (32 hex digits); got {value!r}", column) from None


def _attribute(c: Comparison, entity: Entity, params: Params) -> Pred:
    attr = attribute(entity, c.ident)
    name = c.ident.key.lower()
    values = _values(c)
    if attr.type == "int":
        if c.op in ("LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"):
            raise _error(f"{name} is a number; LIKE matches text", c.column)
        ints = [_int_value(v, name, attr.digit_strings, c.column) for v in values]
        if c.op in ("IN", "NOT IN"):
            array = params.add(ints, "bigint[]")
            pred = f"{attr.sql} = ANY({array})" if c.op == "IN" else f"{attr.sql} <> ALL({array})"
        else:
            pred = f"{attr.sql} {'<>' if c.op == '!=' else c.op} {params.add(ints[0], 'bigint')}"
    elif attr.type == "uuid":
        if c.op in ("LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE"):
            pattern = params.add(c.value, "text")
            op = c.op.replace("NOT ", "")
            pred = f"replace({attr.sql}::text, '-', '') {op} {pattern}"
            pred = f"NOT ({pred})" if c.op.startswith("NOT") else pred
        elif c.op in ("IN", "NOT IN"):
            array = params.add([_uuid_value(v, name, c.column) for v in values], "uuid[]")
            pred = f"{attr.sql} = ANY({array})" if c.op == "IN" else f"{attr.sql} <> ALL({array})"
        elif c.op in ("=", "!="):
            run_id = params.add(_uuid_value(values[0], name, c.column), "uuid")
            pred = f"{attr.sql} {'=' if c.op == '=' else '<>'} {run_id}"
        else:
            raise _error(f"'{c.op}' does not apply to {name}; use =, !=, IN or LIKE", c.column)
    else:
        if _all_numbers(c):
            raise _error(f"{name} is text: quote the value", c.column)
        if attr.choices and c.op in ("=", "!=", "IN", "NOT IN"):
            bad = [v for v in values if v not in attr.choices]
            if bad:
                raise _error(f"{name} is one of {', '.join(attr.choices)}; got {bad[0]!r}", c.column)
        pred = str(_text_predicate(attr.sql, c, params))
    return f"({pred}) IS TRUE" if attr.nullable else pred


# -- the tree ----------------------------------------------------------------------------------------


def _keyed(ident: Identifier, entity: Entity) -> KeyedTable:
    table = entity.keyed.get(ident.kind)
    if table is None:
        kinds = ", ".join(f"{k}s" for k in entity.keyed)
        raise FilterError(
            f"{entity.noun}s have no {ident.kind}s ('{ident.text}' at column {ident.column}); "
            f"filter on attributes or {kinds}",
            column=ident.column,
        )
    return table


def _exists(table: KeyedTable, entity: Entity, key: str, pred: Pred, params: Params) -> Pred:
    if pred is False:
        return False
    where = f"k.{table.owner} = {entity.id_sql} AND k.key = {params.add(key, 'text')}"
    if pred is not True:
        where += f" AND {pred}"
    return f"EXISTS (SELECT FROM {table.table} k WHERE {where})"


def compile_filter(expr: Expr | None, entity: Entity, params: Params, known: Known | None = None) -> Pred:
    """The predicate for `expr` (True for no filter). Raises FilterError for filters that make no sense,
    such as a string compared with a metric or an unknown attribute."""
    known = known or {}
    if expr is None:
        return True
    if isinstance(expr, And):
        return _and([compile_filter(e, entity, params, known) for e in expr.items])
    if isinstance(expr, Or):
        return _or([compile_filter(e, entity, params, known) for e in expr.items])
    if isinstance(expr, Not):
        return _not(compile_filter(expr.item, entity, params, known))
    ident = expr.ident
    if ident.kind == "attribute":
        if isinstance(expr, IsNull):
            attr = attribute(entity, ident)
            if not attr.nullable:
                return expr.negated
            return f"{attr.sql} IS {'NOT ' if expr.negated else ''}NULL"
        return _attribute(expr, entity, params)
    table = _keyed(ident, entity)
    slot = (ident.kind, ident.key)
    if slot in known:
        joined = known[slot]
        if isinstance(expr, IsNull):
            return (joined is not None) == expr.negated
        if joined is None:
            return False  # every comparison needs the key to be logged
        if joined.nan:
            _keyed_value(expr, "NaN", table, Params())  # the same validation as anywhere else
            return _nan_decides(expr)
        return _keyed_value(expr, f"{joined.alias}.value", table, params)
    if isinstance(expr, IsNull):
        exists = _exists(table, entity, ident.key, True, params)
        return exists if expr.negated else _not(exists)
    return _exists(table, entity, ident.key, _keyed_value(expr, "k.value", table, params), params)
