"""MLflow filter strings and order_by clauses → kiseki's search language.

kiseki's language is MLflow's plus OR/NOT/parentheses, so the text is parsed with kiseki's own parser,
MLflow's names for things kiseki keeps in columns are rewritten (`tags.mlflow.runName` is the run name,
`tags.mlflow.parentRunId` the parent, `attributes.created` the start time, `attributes.user_id` the
`mlflow.user` tag), and the tree is written back as kiseki text. Nothing here builds SQL.
"""

from __future__ import annotations

import math

from kiseki_server.search.ast import And, Comparison, Expr, Identifier, IsNull, Not, Or, OrderKey, Scalar
from kiseki_server.search.parser import parse_filter, parse_order_by

_RUN_RENAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("tag", "mlflow.runName"): ("attribute", "run_name"),
    ("tag", "mlflow.parentRunId"): ("attribute", "parent_run_id"),
    ("attribute", "created"): ("attribute", "start_time"),
    ("attribute", "run_uuid"): ("attribute", "run_id"),
    ("attribute", "user_id"): ("tag", "mlflow.user"),
}
_PREFIX = {"metric": "metrics", "param": "params", "tag": "tags", "attribute": "attributes"}


def _rename(ident: Identifier, runs: bool) -> Identifier:
    if not runs:
        return ident
    lookup = ident.key.lower() if ident.kind == "attribute" else ident.key
    found = _RUN_RENAMES.get((ident.kind, lookup))
    if found is None:
        return ident
    kind, key = found
    return Identifier(kind, key, ident.text, ident.column)  # type: ignore[arg-type]


def _ident(ident: Identifier) -> str:
    if ident.kind == "attribute":
        return f"attributes.{ident.key}"
    quoted = ident.key.replace("\\", "\\\\").replace("`", "``")
    return f"{_PREFIX[ident.kind]}.`{quoted}`"


def _scalar(value: Scalar) -> str:
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _text(expr: Expr, runs: bool) -> str:
    if isinstance(expr, Comparison):
        ident = _ident(_rename(expr.ident, runs))
        if isinstance(expr.value, tuple):
            return f"{ident} {expr.op} ({', '.join(_scalar(v) for v in expr.value)})"
        return f"{ident} {expr.op} {_scalar(expr.value)}"
    if isinstance(expr, IsNull):
        return f"{_ident(_rename(expr.ident, runs))} IS {'NOT ' if expr.negated else ''}NULL"
    if isinstance(expr, And):
        return " AND ".join(
            f"({_text(e, runs)})" if isinstance(e, Or) else _text(e, runs) for e in expr.items
        )
    if isinstance(expr, Or):
        return " OR ".join(_text(e, runs) for e in expr.items)
    inner = expr.item
    body = _text(inner, runs)
    return f"NOT ({body})" if isinstance(inner, (And, Or, Not)) else f"NOT {body}"


def translate_filter(text: str | None, *, runs: bool = True) -> str:
    """kiseki filter text meaning what MLflow's `text` means (errors name the field 'filter')."""
    if not text or not text.strip():
        return ""
    expr = parse_filter(text)
    return "" if expr is None else _text(expr, runs)


def translate_order_by(clauses: list[str], *, runs: bool = True) -> list[str]:
    out = []
    for i, clause in enumerate(clauses):
        key: OrderKey = parse_order_by(clause, field=f"order_by.{i}")
        out.append(f"{_ident(_rename(key.ident, runs))} {'DESC' if key.descending else 'ASC'}")
    return out
