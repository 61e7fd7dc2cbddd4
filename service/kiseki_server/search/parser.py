"""Filter strings and order_by clauses → AST (see docs/search.md for the language).

A hand-written tokenizer and recursive-descent parser: every failure is a `FilterError` naming what was
expected, after what, at which column; arbitrary input never raises anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

from kiseki_server.search.ast import (
    And,
    Comparison,
    Expr,
    FilterError,
    Identifier,
    IsNull,
    Kind,
    Not,
    Op,
    Or,
    OrderKey,
    Scalar,
)

MAX_DEPTH = 64
"""Deepest nesting of parentheses and NOTs (keeps recursion bounded)."""
MAX_COMPARISONS = 200
"""Most comparisons in one filter: each becomes a subquery, and a page must stay cheap."""
MAX_IN_VALUES = 10_000

PREFIXES: dict[str, Kind] = {
    "metrics": "metric",
    "metric": "metric",
    "params": "param",
    "param": "param",
    "tags": "tag",
    "tag": "tag",
    "attributes": "attribute",
    "attribute": "attribute",
    "attr": "attribute",
    "run": "attribute",
}
KEYWORDS = {"and", "or", "not", "in", "like", "ilike", "is", "null", "asc", "desc"}

TokenType = Literal["ident", "keyword", "op", "string", "number", "(", ")", ",", "end"]


@dataclass(frozen=True, slots=True)
class Token:
    type: TokenType
    text: str
    """Source text, for messages."""
    column: int
    value: Scalar | Identifier | None = None


_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(
    r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?:infinity|inf|nan)(?![\w.]))", re.IGNORECASE
)
_WORD = re.compile(r"[^\W\d]\w*")
_BARE_KEY = re.compile(r"[\w.\-/:]+")
_OPS = ("<=", ">=", "!=", "<>", "==", "=", "<", ">")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "`": "`", "n": "\n", "t": "\t", "r": "\r"}


def _number(text: str) -> float | int:
    body = text.lstrip("+-").lower()
    if body in ("inf", "infinity", "nan"):
        return float(text)
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    return float(text)


class _Tokenizer:
    def __init__(self, text: str, field: str) -> None:
        self.text = text
        self.field = field
        self.pos = 0

    def error(self, message: str, pos: int) -> FilterError:
        return FilterError(message.replace("{col}", str(pos + 1)), column=pos + 1, field=self.field)

    def quoted(self, start: int, noun: str = "string") -> str:
        """The text of the quoted string at `start` (escapes resolved); moves past its closing quote."""
        text, quote = self.text, self.text[start]
        out: list[str] = []
        i = start + 1
        while i < len(text):
            c = text[i]
            if c == "\\" and i + 1 < len(text):
                nxt = text[i + 1]
                # Unknown escapes stay as written, so LIKE's own `\%` and `\_` reach the pattern intact.
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
            elif c == quote:
                if text.startswith(quote, i + 1):
                    out.append(quote)
                    i += 2
                else:
                    self.pos = i + 1
                    return "".join(out)
            else:
                out.append(c)
                i += 1
        raise self.error(f"unterminated {noun} starting at column {{col}}", start)

    def identifier(self, word_start: int, word: str) -> Token:
        prefix = word.lower()
        if prefix not in PREFIXES:
            raise self.error(
                f"unknown prefix '{word}.' at column {{col}}; expected metrics., params., tags. or "
                "attributes.",
                word_start,
            )
        key_start = self.pos
        if key_start < len(self.text) and self.text[key_start] in "`\"'":
            if self.text[key_start] == "'":
                raise self.error(
                    "keys are quoted with backticks or double quotes, not single quotes, at column {col}",
                    key_start,
                )
            key = self.quoted(key_start, "quoted key")
        elif match := _BARE_KEY.match(self.text, key_start):
            key = match.group()
            self.pos = match.end()
        else:
            raise self.error(f"expected a key after '{word}.' at column {{col}}", key_start)
        if not key:
            raise self.error(f"empty key after '{word}.' at column {{col}}", key_start)
        source = self.text[word_start : self.pos]
        ident = Identifier(PREFIXES[prefix], key, source, word_start + 1)
        return Token("ident", source, word_start + 1, ident)

    def next(self) -> Token:
        text = self.text
        if space := _SPACE.match(text, self.pos):
            self.pos = space.end()
        start = self.pos
        if start >= len(text):
            return Token("end", "", start + 1)
        c = text[start]
        if c in "(),":
            self.pos += 1
            return Token(c, c, start + 1)  # type: ignore[arg-type]
        for op in _OPS:
            if text.startswith(op, start):
                self.pos += len(op)
                canonical = {"<>": "!=", "==": "="}.get(op, op)
                return Token("op", op, start + 1, canonical)
        if c in "'\"":
            value = self.quoted(start)
            return Token("string", text[start : self.pos], start + 1, value)
        if c == "`":
            raise self.error(
                "backticks quote a key after a prefix, as in params.`my key`; found one at column {col}",
                start,
            )
        if number := _NUMBER.match(text, start):
            self.pos = number.end()
            return Token("number", number.group(), start + 1, _number(number.group()))
        if word := _WORD.match(text, start):
            self.pos = word.end()
            if text.startswith(".", self.pos):
                self.pos += 1
                return self.identifier(start, word.group())
            lower = word.group().lower()
            if lower in KEYWORDS:
                return Token("keyword", word.group(), start + 1, lower.upper())
            ident = Identifier("attribute", word.group(), word.group(), start + 1)
            return Token("ident", word.group(), start + 1, ident)
        raise self.error(f"unexpected character {c!r} at column {{col}}", start)


class _Parser:
    def __init__(self, text: str, field: str) -> None:
        self.tokens = _Tokenizer(text, field)
        self.field = field
        self.prev: Token | None = None
        self.tok = self.tokens.next()
        self.comparisons = 0

    def advance(self) -> Token:
        self.prev, self.tok = self.tok, self.tokens.next()
        return self.prev

    def expected(self, what: str, hint: str = "") -> FilterError:
        tok = self.tok
        after = f" after '{self.prev.text}'" if self.prev is not None else ""
        found = "the end of the text" if tok.type == "end" else f"'{tok.text}'"
        message = f"expected {what}{after} at column {tok.column}, found {found}"
        return FilterError(message + (f" ({hint})" if hint else ""), column=tok.column, field=self.field)

    def at(self, token_type: TokenType) -> bool:
        return self.tok.type == token_type

    def keyword(self, *words: str) -> bool:
        return self.at("keyword") and self.tok.value in words

    # -- filter grammar ---------------------------------------------------------------------------

    def filter(self) -> Expr:
        expr = self.disjunction(0)
        if not self.at("end"):
            raise self.expected("AND, OR or the end of the filter")
        return expr

    def disjunction(self, depth: int) -> Expr:
        items = [self.conjunction(depth)]
        while self.keyword("OR"):
            self.advance()
            items.append(self.conjunction(depth))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def conjunction(self, depth: int) -> Expr:
        items = [self.negation(depth)]
        while self.keyword("AND"):
            self.advance()
            items.append(self.negation(depth))
        return items[0] if len(items) == 1 else And(tuple(items))

    def negation(self, depth: int) -> Expr:
        if depth >= MAX_DEPTH:
            raise FilterError(
                f"the filter nests deeper than {MAX_DEPTH} levels at column {self.tok.column}",
                column=self.tok.column,
                field=self.field,
            )
        if self.keyword("NOT"):
            self.advance()
            return Not(self.negation(depth + 1))
        if self.at("("):
            self.advance()
            expr = self.disjunction(depth + 1)
            if not self.at(")"):
                raise self.expected("AND, OR or ')'")
            self.advance()
            return expr
        return self.comparison()

    def identifier(self) -> Identifier:
        if not self.at("ident"):
            raise self.expected("an identifier such as metrics.acc, params.lr, tags.team or status")
        ident = self.advance().value
        assert isinstance(ident, Identifier)
        return ident

    def comparison(self) -> Expr:
        if not self.at("ident"):
            raise self.expected("an identifier such as metrics.acc, params.lr or tags.team, NOT or '('")
        ident = self.identifier()
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise FilterError(
                f"a filter may hold at most {MAX_COMPARISONS} comparisons; "
                f"the one at column {ident.column} is one too many",
                column=ident.column,
                field=self.field,
            )
        tok = self.tok
        if tok.type == "op":
            self.advance()
            column = self.tok.column
            return Comparison(ident, cast(Op, tok.value), self.value(), column)
        if self.keyword("IS"):
            self.advance()
            negated = self.keyword("NOT")
            if negated:
                self.advance()
            if not self.keyword("NULL"):
                raise self.expected("NULL or NOT NULL")
            self.advance()
            return IsNull(ident, negated)
        negated = self.keyword("NOT")
        if negated:
            self.advance()
            if not self.keyword("IN", "LIKE", "ILIKE"):
                raise self.expected("IN, LIKE or ILIKE")
        if self.keyword("LIKE", "ILIKE"):
            word = str(self.advance().value)
            column = self.tok.column
            if not self.at("string"):
                raise self.expected("a quoted pattern")
            pattern = self.advance().value
            assert isinstance(pattern, str)
            return Comparison(ident, cast(Op, f"NOT {word}" if negated else word), pattern, column)
        if self.keyword("IN"):
            self.advance()
            column = self.tok.column
            return Comparison(ident, "NOT IN" if negated else "IN", self.values(), column)
        raise self.expected("a comparison operator", "one of =, !=, <, <=, >, >=, LIKE, ILIKE, IN, IS")

    def value(self) -> Scalar:
        if self.tok.type in ("string", "number"):
            value = self.advance().value
            assert isinstance(value, (str, int, float))
            return value
        if self.keyword("NULL"):
            raise self.expected("a value", "to test for a key that was not logged, write IS NULL")
        raise self.expected("a value", "a quoted string or a number")

    def values(self) -> tuple[Scalar, ...]:
        if not self.at("("):
            raise self.expected("'(' and a list of values")
        self.advance()
        values = [self.value()]
        while self.at(","):
            self.advance()
            values.append(self.value())
            if len(values) > MAX_IN_VALUES:
                raise self.expected("')'", f"an IN list holds at most {MAX_IN_VALUES} values")
        if not self.at(")"):
            raise self.expected("',' or ')'")
        self.advance()
        return tuple(values)

    # -- order_by ---------------------------------------------------------------------------------

    def order_key(self) -> OrderKey:
        ident = self.identifier()
        descending = False
        if self.keyword("ASC", "DESC"):
            descending = self.advance().value == "DESC"
        if not self.at("end"):
            raise self.expected("ASC, DESC or the end of the clause")
        return OrderKey(ident, descending)


def parse_filter(text: str, *, field: str = "filter") -> Expr | None:
    """The AST of a filter; None for an empty (or blank) filter, which matches everything."""
    parser = _Parser(text, field)
    if parser.tok.type == "end":
        return None
    return parser.filter()


def parse_order_by(text: str, *, field: str = "order_by") -> OrderKey:
    """One order_by clause: an identifier, then ASC (the default) or DESC."""
    return _Parser(text, field).order_key()
