"""order_by → segments, ORDER BY clauses and keyset predicates.

Every order key sorts values first (in its direction), then NaN (metrics), then runs without the key,
in both directions; ties go to the run id, in the direction of the last key.

The first key decides *segments*: one query each for runs whose first key is a number, NaN, or missing.
Within the "number" segment the key's row is an inner join, so Postgres can walk an index on
(key, value, run_id) and stop after a page; the others are usually empty or skipped. A page token is
the segment plus the last row's sort values, so the next page starts where this one ended (no OFFSET).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from kiseki_server.errors import InvalidInput
from kiseki_server.pagination import bad_token, valid_value
from kiseki_server.search.ast import Kind, OrderKey
from kiseki_server.search.compiler import Attribute, Entity, Joined, KeyedTable, Known, Params, attribute

SegmentKind = Literal["all", "value", "nan", "missing"]


@dataclass(frozen=True, slots=True)
class SortKey:
    order: OrderKey
    source: Attribute | KeyedTable

    @property
    def slot(self) -> tuple[Kind, str]:
        return (self.order.ident.kind, self.order.ident.key)

    @property
    def numeric(self) -> bool:
        return isinstance(self.source, KeyedTable) and self.source.numeric

    @property
    def nullable(self) -> bool:
        return isinstance(self.source, KeyedTable) or self.source.nullable


@dataclass(frozen=True, slots=True)
class Component:
    """One column of the sort: its SQL, direction, and how its cursor value is typed."""

    sql: str
    descending: bool
    type: Literal["class", "float", "text", "int", "uuid"]


@dataclass(frozen=True, slots=True)
class SegmentQuery:
    joins: str
    where: str
    known: Known
    components: list[Component]
    """Sort columns in order; the last is the entity id."""


def resolve(keys: list[OrderKey], entity: Entity) -> list[SortKey]:
    resolved = []
    for i, key in enumerate(keys):
        ident = key.ident
        if ident.kind == "attribute":
            source: Attribute | KeyedTable = attribute(entity, ident, field=f"order_by.{i}")
        elif ident.kind in entity.keyed:
            source = entity.keyed[ident.kind]
        else:
            raise InvalidInput(f"{entity.noun}s have no {ident.kind}s to order by", field=f"order_by.{i}")
        resolved.append(SortKey(key, source))
    return resolved


def segments(first: SortKey | None) -> list[SegmentKind]:
    if first is None or not first.nullable:
        return ["all"]
    return ["value", "nan", "missing"] if first.numeric else ["value", "missing"]


def _value_type(key: SortKey) -> Literal["float", "text", "int", "uuid"]:
    if isinstance(key.source, KeyedTable):
        return "float" if key.source.numeric else "text"
    return "int" if key.source.type == "int" else key.source.type


def segment_query(keys: list[SortKey], segment: SegmentKind, entity: Entity, params: Params) -> SegmentQuery:
    """Joins, segment condition and sort columns of one segment (the filter is compiled separately,
    with `known` telling it which keys this segment already joined or excluded)."""
    joins: list[str] = []
    where: list[str] = []
    known: dict[tuple[Kind, str], Joined | None] = {}
    components: list[Component] = []
    for i, key in enumerate(keys):
        desc = key.order.descending
        src = key.source
        if isinstance(src, KeyedTable):
            alias = f"o{i}"
            link = (
                f"{alias}.{src.owner} = {entity.id_sql} AND {alias}.key = {params.add(key.order.ident.key)}"
            )
            if i == 0:
                if segment == "missing":
                    where.append(f"NOT EXISTS (SELECT FROM {src.table} {alias} WHERE {link})")
                    known[key.slot] = None
                    continue
                joins.append(f"JOIN {src.table} {alias} ON {link}")
                if segment == "nan":
                    where.append(f"{alias}.value = 'NaN'::float8")
                    known[key.slot] = Joined(alias, nan=True)
                    continue
                if src.numeric:
                    where.append(f"{alias}.value < 'NaN'::float8")
                known[key.slot] = Joined(alias)
                components.append(Component(f"{alias}.value", desc, _value_type(key)))
                continue
            joins.append(f"LEFT JOIN {src.table} {alias} ON {link}")
            value = f"{alias}.value"
            nan = f" WHEN {value} = 'NaN'::float8 THEN 1" if src.numeric else ""
            components.append(
                Component(f"(CASE WHEN {value} IS NULL THEN 2{nan} ELSE 0 END)", False, "class")
            )
            components.append(Component(value, desc, _value_type(key)))
            continue
        if src.nullable:
            if i == 0:
                where.append(f"{src.sql} IS {'NOT ' if segment == 'value' else ''}NULL")
                if segment == "missing":
                    continue
            else:
                components.append(
                    Component(f"(CASE WHEN {src.sql} IS NULL THEN 2 ELSE 0 END)", False, "class")
                )
        components.append(Component(src.sql, desc, _value_type(key)))
    last_desc = keys[-1].order.descending if keys else True
    components.append(Component(entity.id_sql, last_desc, _ID_TYPES[entity.id_type]))
    return SegmentQuery(
        joins="\n".join(joins), where=" AND ".join(where) or "TRUE", known=known, components=components
    )


_ID_TYPES: dict[str, Literal["int", "uuid"]] = {"bigint": "int", "uuid": "uuid"}
"""The entity id's SQL type → its component type: the last sort column, checked like any other."""


def order_clause(components: list[Component]) -> str:
    return ", ".join(f"{c.sql} {'DESC' if c.descending else 'ASC'}" for c in components)


# -- cursors -----------------------------------------------------------------------------------------


def cursor_of(row: Mapping[str, Any], components: list[Component]) -> list[object]:
    """The JSON-safe sort values of a result row (selected as _s0, _s1, …): floats as text so that
    ±inf survive, values under a non-zero class as null (all equal)."""
    out: list[object] = []
    hidden = False
    for i, comp in enumerate(components):
        value = row[f"_s{i}"]
        if hidden:
            value, hidden = None, False
        elif comp.type == "class":
            hidden = value != 0
        elif comp.type == "float":
            value = repr(float(value))
        out.append(value)
    return out


def _bad_token() -> InvalidInput:
    return bad_token("page_token is not a token this search returned")


_HEX32 = re.compile(r"[0-9a-f]{32}")


def _typed(value: object, kind: str) -> object:
    """One cursor value checked and converted for its component, or None when it cannot be one this
    search produced (a uuid must be our 32-hex form: Postgres would take `0x…` or `{…}` as an error)."""
    if kind == "class":
        return value if type(value) is int and value in (0, 1, 2) else None
    if kind in ("int", "text"):
        return value if valid_value(value, int if kind == "int" else str) else None
    if kind == "uuid":
        return value if type(value) is str and _HEX32.fullmatch(value) else None
    if kind == "float" and type(value) is str and len(value) <= 40:
        try:
            number = float(value)
        except ValueError:
            return None
        return None if math.isnan(number) else number
    return None


def check_cursor(values: list[object], components: list[Component]) -> list[object]:
    """The cursor of a page token, typed for the query (a forged token is a 400, never a 500).

    Values under a non-zero class component must be null (cursor_of writes them so)."""
    if len(values) != len(components):
        raise _bad_token()
    out: list[object] = []
    hidden = False
    for value, comp in zip(values, components, strict=True):
        if hidden:
            if value is not None:
                raise _bad_token()
            out.append(None)
            hidden = False
            continue
        typed = _typed(value, comp.type)
        if typed is None:
            raise _bad_token()
        hidden = comp.type == "class" and typed != 0
        out.append(typed)
    return out


_CASTS = {"class": "int", "float": "float8", "text": "text", "int": "bigint", "uuid": "uuid"}


def after(components: list[Component], cursor: list[object], params: Params, id_type: str) -> str:
    """Rows strictly after `cursor` (as check_cursor returned it) in the sort order. Components whose
    cursor is null (values under a non-zero class) are equal for every row compared and drop out. One
    direction throughout: a row comparison, which Postgres uses as an index bound; mixed: nested ORs
    behind a bound on the first. `id_type` is the entity id's SQL type, the cast of the last column."""
    if _CASTS[components[-1].type] != id_type:
        raise ValueError(f"the last sort column must be the {id_type} entity id")
    pairs = [
        (c, params.add(v, _CASTS[c.type])) for c, v in zip(components, cursor, strict=True) if v is not None
    ]
    if len({c.descending for c, _ in pairs}) == 1:
        op = "<" if pairs[0][0].descending else ">"
        if len(pairs) == 1:
            return f"{pairs[0][0].sql} {op} {pairs[0][1]}"
        return f"({', '.join(c.sql for c, _ in pairs)}) {op} ({', '.join(p for _, p in pairs)})"
    sql = ""
    for c, p in reversed(pairs):
        strict = f"{c.sql} {'<' if c.descending else '>'} {p}"
        sql = strict if not sql else f"({strict} OR ({c.sql} = {p} AND {sql}))"
    first, p = pairs[0]
    return f"{first.sql} {'<=' if first.descending else '>='} {p} AND {sql}"
