"""What the page handlers share: formatting filters, the runs table's query state and its URLs, and the
search language's quoting of keys.

URLs are built here from parts with `urlencode`, never by pasting user text into a path; templates
write them into attributes through autoescaping.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import quote, urlencode

from aiohttp import web

from kiseki.models import ViewType
from kiseki.timefmt import format_time, utc_datetime
from kiseki_server.errors import InvalidInput
from kiseki_server.http_io import query_int, query_str
from kiseki_server.stores.browse import KeyCount

PAGE_SIZES = (25, 50, 100, 250, 500)
DEFAULT_PAGE_SIZE = 100
DEFAULT_COLUMNS = 5
"""Param and metric columns shown by default: the most common keys of each kind."""
VIEWS: Mapping[str, ViewType] = {
    "active": ViewType.ACTIVE_ONLY,
    "deleted": ViewType.DELETED_ONLY,
    "all": ViewType.ALL,
}

_BARE_KEY = re.compile(r"[\w.\-/:]+")


# --- formatting (Jinja filters) ----------------------------------------------------------------------


def fmt_time(ms: int | None) -> str:
    """Epoch milliseconds as 'YYYY-MM-DD HH:MM:SS UTC'; a time outside years 1 to 9999 as its raw number."""
    return format_time(ms, zone=True)


def fmt_iso(ms: int | None) -> str:
    """ISO 8601 for a `<time datetime>` attribute; '' when `ms` is no date in years 1 to 9999."""
    return format_time(ms, iso=True) if ms is not None and utc_datetime(ms) is not None else ""


def fmt_span(ms: float) -> str:
    """A length of time for people: '850 ms', '42.1 s', '3 min 05 s', '2 h 14 min', '3 d 4 h',
    '1,234 y'; an en dash for a negative or unknown length."""
    if not ms >= 0 or math.isinf(ms):
        return "\u2013"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    if days < 3650:
        return f"{days} d {hours} h"
    return f"{days // 365:,} y"


def fmt_duration(start: int, end: int | None, status: str = "") -> str:
    """Run time; a run without an end that is still going counts up to now."""
    if end is None:
        if status in ("RUNNING", "SCHEDULED"):
            return fmt_span(time.time() * 1000 - start)
        return ""
    return fmt_span(end - start)


def fmt_ago(ms: int | None) -> str:
    """How long ago, coarsely: '5 min ago', '3 h ago', '12 d ago'; 'in the future' for a time ahead of
    this server's clock (a client's clock, or microseconds sent as milliseconds)."""
    if ms is None:
        return ""
    elapsed = time.time() - ms / 1000
    if elapsed < -60:
        return "in the future"
    if elapsed < 60:
        return "just now"
    for limit, size, unit in ((3600, 60, "min"), (172_800, 3600, "h"), (math.inf, 86_400, "d")):
        if elapsed < limit:
            return f"{int(elapsed // size):,} {unit} ago"
    raise AssertionError("unreachable")


def fmt_value(value: float | None) -> str:
    """A metric value in at most 6 significant digits; NaN and infinities spelled out."""
    if value is None:
        return ""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "\u2212∞"  # a minus sign, as in typesetting
    if value == 0:
        return "0"
    if 1e-4 <= abs(value) < 1e7:
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:,.0f}"
    return f"{value:.4e}"


def fmt_count(n: int) -> str:
    return f"{n:,}"


def fmt_size(size: int | None) -> str:
    if size is None:
        return ""
    if size < 1024:
        return f"{size} B"
    scaled = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        scaled /= 1024
        if scaled < 1024 or unit == "TiB":
            return f"{scaled:,.1f} {unit}"
    raise AssertionError("unreachable")


FILTERS: Mapping[str, Callable[..., str]] = {
    "time": fmt_time,
    "iso": fmt_iso,
    "ago": fmt_ago,
    "duration": fmt_duration,
    "span": fmt_span,
    "value": fmt_value,
    "thousands": fmt_count,
    "size": fmt_size,
}


# --- URLs and the search language ----------------------------------------------------------------------


def url(path: str, params: Iterable[tuple[str, str]] = ()) -> str:
    """`path` with a query string made from `params` (repeated names allowed, empty values kept out)."""
    pairs = [(k, v) for k, v in params if v != ""]
    return f"{path}?{urlencode(pairs, quote_via=quote)}" if pairs else path


def run_url(run_id: str, params: Iterable[tuple[str, str]] = ()) -> str:
    return url(f"/runs/{quote(run_id, safe='')}", params)


def experiment_url(experiment_id: str | int, params: Iterable[tuple[str, str]] = ()) -> str:
    return url(f"/experiments/{quote(str(experiment_id), safe='')}", params)


def download_url(run_id: str, path: str) -> str:
    return url(f"/runs/{quote(run_id, safe='')}/artifacts/download", [("path", path)])


def identifier(kind: Literal["param", "metric", "tag"], key: str) -> str:
    """`params.lr`, or ``params.`batch size` `` for a key the language only takes quoted."""
    prefix = {"param": "params", "metric": "metrics", "tag": "tags"}[kind]
    if _BARE_KEY.fullmatch(key):
        return f"{prefix}.{key}"
    return prefix + ".`" + key.replace("\\", "\\\\").replace("`", "\\`") + "`"


# --- the runs table of an experiment -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    kind: Literal["attribute", "param", "metric"]
    key: str
    label: str
    sort: str | None
    """Identifier to order by; None when the column cannot be sorted."""
    natural_desc: bool
    """Direction of the first click: newest, largest first for times and metrics."""


ATTRIBUTE_COLUMNS = (
    Column("attribute", "run_name", "Name", "run_name", False),
    Column("attribute", "status", "Status", "status", False),
    Column("attribute", "start_time", "Started", "start_time", True),
    Column("attribute", "duration", "Duration", None, False),
)


@dataclass(frozen=True, slots=True)
class Header:
    column: Column
    url: str | None
    direction: Literal["asc", "desc"] | None
    """How the table is sorted by this column now, if it is."""


@dataclass(frozen=True, slots=True)
class RunTableQuery:
    """Everything the experiment page's URL says: filter, order, view, page, columns."""

    filter: str = ""
    order_by: str = ""
    view: str = "active"
    page_token: str | None = None
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE
    params: tuple[str, ...] | None = None
    """Chosen param columns; None: the default (most common keys)."""
    metrics: tuple[str, ...] | None = None
    chosen: bool = False
    """Whether the URL chose the columns (`cols=1`), possibly none of them."""

    @classmethod
    def parse(cls, request: web.Request) -> RunTableQuery:
        view = query_str(request, "view") or "active"
        if view not in VIEWS:
            raise InvalidInput(f"view must be one of {', '.join(VIEWS)}, got {view!r}", field="view")
        chosen = "cols" in request.query
        return cls(
            filter=query_str(request, "filter") or "",
            order_by=(query_str(request, "order_by") or "").strip(),
            view=view,
            page_token=query_str(request, "page_token") or None,
            page=query_int(request, "page", default=1, lo=1, hi=10**9),
            page_size=query_int(request, "max_results", default=DEFAULT_PAGE_SIZE, lo=1, hi=max(PAGE_SIZES)),
            params=tuple(request.query.getall("param", [])) if chosen else None,
            metrics=tuple(request.query.getall("metric", [])) if chosen else None,
            chosen=chosen,
        )

    @property
    def view_type(self) -> ViewType:
        return VIEWS[self.view]

    def columns(self, keys: Sequence[KeyCount]) -> tuple[list[str], list[str]]:
        """Param and metric keys to show: the chosen ones, or the most common of the sample."""
        if self.params is not None and self.metrics is not None:
            return list(self.params), list(self.metrics)
        params = [k.key for k in keys if k.kind == "param"][:DEFAULT_COLUMNS]
        metrics = [k.key for k in keys if k.kind == "metric"][:DEFAULT_COLUMNS]
        return params, metrics

    def pairs(self, *, with_page: bool = True, with_columns: bool = True) -> list[tuple[str, str]]:
        pairs = [("filter", self.filter), ("order_by", self.order_by)]
        if self.view != "active":
            pairs.append(("view", self.view))
        if self.page_size != DEFAULT_PAGE_SIZE:
            pairs.append(("max_results", str(self.page_size)))
        if with_columns and self.chosen:
            pairs.append(("cols", "1"))
            pairs += [("param", k) for k in self.params or ()]
            pairs += [("metric", k) for k in self.metrics or ()]
        if with_page and self.page_token:
            pairs += [("page_token", self.page_token), ("page", str(self.page))]
        return pairs

    def url(self, experiment_id: str, **changes: object) -> str:
        """This page's URL with `changes`; changing anything but the page goes back to the first page."""
        moved = replace(self, **changes)  # type: ignore[arg-type]
        if "page_token" not in changes:
            moved = replace(moved, page_token=None, page=1)
        return experiment_url(experiment_id, moved.pairs())

    def header(self, experiment_id: str, column: Column) -> Header:
        if column.sort is None:
            return Header(column, None, None)
        current = (self.order_by or "start_time DESC").rsplit(None, 1)
        explicit = len(current) == 2 and current[1].upper() in ("ASC", "DESC")
        ident = current[0] if explicit else " ".join(current)
        desc = explicit and current[1].upper() == "DESC"
        if ident == column.sort:
            direction: Literal["asc", "desc"] | None = "desc" if desc else "asc"
            target = f"{column.sort} {'ASC' if desc else 'DESC'}"
        else:
            direction = None
            target = f"{column.sort} {'DESC' if column.natural_desc else 'ASC'}"
        return Header(column, self.url(experiment_id, order_by=target), direction)


def key_columns(params: Sequence[str], metrics: Sequence[str]) -> list[Column]:
    return [Column("param", k, k, identifier("param", k), False) for k in params] + [
        Column("metric", k, k, identifier("metric", k), True) for k in metrics
    ]


@dataclass(frozen=True, slots=True)
class Choice:
    key: str
    runs: int | None
    """How many sampled runs have the key (None: a chosen key the sample lacks)."""
    checked: bool


def choices(keys: Sequence[KeyCount], shown: Sequence[str], kind: str) -> list[Choice]:
    """The column chooser's keys of one kind: the sample's, most common first, then any shown key the
    sample lacks."""
    sampled = [Choice(k.key, k.runs, k.key in shown) for k in keys if k.kind == kind]
    known = {c.key for c in sampled}
    return sampled + [Choice(key, None, True) for key in shown if key not in known]
