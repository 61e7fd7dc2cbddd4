"""The filter AST: what a filter means, with source positions for error messages; no SQL here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kiseki_server.errors import InvalidInput

Kind = Literal["metric", "param", "tag", "attribute"]
Op = Literal["=", "!=", "<", "<=", ">", ">=", "LIKE", "ILIKE", "NOT LIKE", "NOT ILIKE", "IN", "NOT IN"]
Scalar = str | float
"""A literal: a string, or a number (int or float; NaN and ±inf included)."""


class FilterError(InvalidInput):
    """A filter or order_by clause that cannot be parsed or does not make sense, with the 1-based column
    of the problem (also in the message) so a UI can point at it."""

    def __init__(self, message: str, *, column: int, field: str = "filter") -> None:
        super().__init__(message, field=field)
        self.column = column


@dataclass(frozen=True, slots=True)
class Identifier:
    """`metrics.acc` → kind "metric", key "acc". Bare names (`status`) are attributes."""

    kind: Kind
    key: str
    text: str
    """The identifier as written, for messages."""
    column: int


@dataclass(frozen=True, slots=True)
class Comparison:
    """`identifier op value`; IN/NOT IN carry a tuple of values."""

    ident: Identifier
    op: Op
    value: Scalar | tuple[Scalar, ...]
    column: int
    """Column of the value (where a bad value is reported)."""


@dataclass(frozen=True, slots=True)
class IsNull:
    """`identifier IS [NOT] NULL`: whether the key was logged (the attribute is set)."""

    ident: Identifier
    negated: bool


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Expr


Expr = Comparison | IsNull | And | Or | Not


@dataclass(frozen=True, slots=True)
class OrderKey:
    ident: Identifier
    descending: bool
