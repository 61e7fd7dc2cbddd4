"""The run browser's pages. Handlers are thin: they read the URL, ask the stores (a few set-based
queries per page, run concurrently), and hand plain data to a template."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic
from aiohttp import web

from kiseki.models import Run, RunList, RunSearch
from kiseki_server.appkeys import STORES
from kiseki_server.auth.middleware import AUTHORIZER
from kiseki_server.auth.policy import READ, READ_HANDLER, READ_PATH, Access, Level
from kiseki_server.errors import InvalidInput, KisekiError, validation_error
from kiseki_server.http_io import query_str
from kiseki_server.metric_codec import Points
from kiseki_server.search.ast import FilterError
from kiseki_server.stores.experiments import parse_experiment_id
from kiseki_server.stores.runs import parse_run_id
from kiseki_server.web import charts, files, views
from kiseki_server.web.render import render

EXPERIMENTS_PAGE = 100
MAX_CHARTS = 40
"""Charts on a run or compare page (metric keys beyond it are listed, not drawn)."""
MAX_COMPARE = 20
CHART_POINTS = 500
"""Points per curve on a run page: about one per pixel of a chart's width."""
COMPARE_POINTS_BUDGET = 3000
"""Points per chart on the compare page, shared by its curves."""


def _series(label: str, points: Points | None, style: charts.Style) -> charts.Series | None:
    if points is None or not len(points):
        return None
    return charts.Series(label, points.steps, points.timestamps, points.values, style)


def _x_axis(request: web.Request) -> str:
    x = query_str(request, "x") or "step"
    if x not in charts.X_AXES:
        raise InvalidInput(f"x must be 'step' or 'time', got {x!r}", field="x")
    return x


async def experiments_page(request: web.Request) -> web.Response:
    """All active experiments, newest first, with run counts and last activity."""
    name = (query_str(request, "name") or "").strip()
    pattern = None
    if name:
        pattern = "%" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    page_token = query_str(request, "page_token") or None
    reader = request.app[AUTHORIZER].reader(request)
    found = await request.app[STORES].experiments.search(
        name_like=pattern, max_results=EXPERIMENTS_PAGE, page_token=page_token, reader=reader
    )
    summaries = await request.app[STORES].browse.experiment_summaries(
        [int(e.experiment_id) for e in found.experiments], reader=reader
    )
    next_url = None
    if found.next_page_token:
        next_url = views.url("/", [("name", name), ("page_token", found.next_page_token)])
    return render(
        request,
        "experiments.html",
        {
            "experiments": found.experiments,
            "summaries": {str(k): v for k, v in summaries.items()},
            "name": name,
            "next_url": next_url,
            "first_url": views.url("/", [("name", name)]) if page_token else None,
        },
    )


async def experiment_page(request: web.Request) -> web.Response:
    """One experiment's runs: filter, sort, keyset pages, chosen columns, a form to compare runs."""
    experiment_id = parse_experiment_id(request.match_info["experiment_id"])
    q = views.RunTableQuery.parse(request)
    stores, browse = request.app[STORES], request.app[STORES].browse
    experiment, keys, summaries = await asyncio.gather(
        stores.experiments.get(experiment_id),
        browse.common_keys(experiment_id, view_type=q.view_type),
        browse.experiment_summaries([experiment_id]),
    )
    params, metrics = q.columns(keys)
    filter_error: KisekiError | None = None
    runs = RunList(runs=[])
    try:
        search = RunSearch(
            experiment_ids=[str(experiment_id)],
            filter=q.filter,
            order_by=[q.order_by] if q.order_by else [],
            max_results=q.page_size,
            page_token=q.page_token,
            view_type=q.view_type,
        )
        runs = await request.app[STORES].search.search_runs(
            search, reader=request.app[AUTHORIZER].reader(request)
        )
    except pydantic.ValidationError as exc:
        filter_error = validation_error(exc)
    except InvalidInput as exc:
        filter_error = exc
    exp = experiment.experiment_id
    columns = [*views.ATTRIBUTE_COLUMNS, *views.key_columns(params, metrics)]
    return render(
        request,
        "experiment.html",
        {
            "experiment": experiment,
            "summary": summaries.get(experiment_id),
            "q": q,
            "runs": runs.runs,
            "headers": [q.header(exp, c) for c in columns],
            "params": params,
            "metrics": metrics,
            "choices": {
                "param": views.choices(keys, params, "param"),
                "metric": views.choices(keys, metrics, "metric"),
            },
            "filter_error": filter_error,
            "filter_column": filter_error.column if isinstance(filter_error, FilterError) else None,
            "next_url": q.url(exp, page_token=runs.next_page_token, page=q.page + 1)
            if runs.next_page_token
            else None,
            "first_url": q.url(exp) if q.page_token else None,
            "view_urls": {view: q.url(exp, view=view) for view in views.VIEWS},
            "size_urls": {size: q.url(exp, page_size=size) for size in views.PAGE_SIZES},
            "first_row": (q.page - 1) * q.page_size + 1,
        },
    )


async def run_page(request: web.Request) -> web.Response:
    """A run: info, family, params, tags, latest metrics, a chart per metric and its artifacts."""
    run_id = parse_run_id(request.match_info["run_id"])
    x = _x_axis(request)
    stores = request.app[STORES]
    run = await stores.runs.get(run_id)
    keys = sorted(run.data.metrics)
    drawn = keys[:MAX_CHARTS]
    experiment, family, inputs, histories, listing = await asyncio.gather(
        stores.experiments.get(int(run.info.experiment_id)),
        request.app[STORES].browse.family(
            run_id, run.info.parent_run_id, reader=request.app[AUTHORIZER].reader(request)
        ),
        stores.datasets.of_runs([run_id]),
        stores.metrics.downsampled_many([(run_id, k) for k in drawn], max_points=CHART_POINTS),
        files.listing(
            request,
            run.info,
            query_str(request, "path") or "",
            query_str(request, "artifacts_token") or None,
            query_str(request, "view") or None,
        ),
    )
    style = charts.styles(1)[0]
    figures = []
    for key in drawn:
        series = _series(key, histories.get((run_id, key)), style)
        figures.append(charts.line_chart(key, [series] if series else []))
    return render(
        request,
        "run.html",
        {
            "run": run,
            "experiment": experiment,
            "family": family,
            "inputs": inputs[run_id],
            "charts": figures,
            "undrawn": keys[MAX_CHARTS:],
            "x": x,
            "x_urls": {axis: _with(request, x=axis) for axis in charts.X_AXES},
            "files": listing,
            "folder_url": lambda path: views.run_url(run_id, [("path", path)]) + "#artifacts",
            "view_url": lambda path: (
                views.run_url(run_id, [("path", listing.folder), ("view", path)]) + "#artifacts"
            ),
            "more_files_url": views.run_url(
                run_id, [("path", listing.folder), ("artifacts_token", listing.next_page_token or "")]
            )
            + "#artifacts",
            "download_url": lambda path: views.download_url(run_id, path),
            "preview_kind": files.preview_kind,
        },
    )


async def compare_page(request: web.Request) -> web.Response:
    """Selected runs side by side: params (differences marked), metrics, one overlaid chart per key."""
    raw = request.query.getall("runs", [])
    ids = list(dict.fromkeys(parse_run_id(value, field="runs") for value in raw))
    if len(ids) < 2:
        raise InvalidInput("choose at least two runs to compare (runs=<id>&runs=<id>)", field="runs")
    if len(ids) > MAX_COMPARE:
        raise InvalidInput(f"compare at most {MAX_COMPARE} runs at a time, got {len(ids)}", field="runs")
    x = _x_axis(request)
    authorizer = request.app[AUTHORIZER]
    for run_id in ids:
        await authorizer.require_run(request, run_id, Level.READ)
    runs = await request.app[STORES].browse.runs(ids, reader=authorizer.reader(request))
    keys = sorted({k for run in runs for k in run.data.metrics})
    drawn = keys[:MAX_CHARTS]
    pairs = [(run.info.run_id, k) for k in drawn for run in runs if k in run.data.metrics]
    max_points = max(50, min(CHART_POINTS, COMPARE_POINTS_BUDGET // len(runs)))
    experiment_ids = sorted({int(run.info.experiment_id) for run in runs})
    histories, experiments = await asyncio.gather(
        request.app[STORES].metrics.downsampled_many(pairs, max_points=max_points),
        asyncio.gather(*(request.app[STORES].experiments.get(i) for i in experiment_ids)),
    )
    palette = charts.styles(len(runs))
    labels = _labels(runs)
    figures = []
    for key in drawn:
        series = [
            _series(labels[run.info.run_id], histories.get((run.info.run_id, key)), palette[i])
            for i, run in enumerate(runs)
        ]
        figures.append(charts.line_chart(key, [s for s in series if s is not None]))
    return render(
        request,
        "compare.html",
        {
            "runs": runs,
            "labels": labels,
            "styles": {run.info.run_id: palette[i] for i, run in enumerate(runs)},
            "experiments": {e.experiment_id: e for e in experiments},
            "params": _rows(runs, "params"),
            "metric_rows": _rows(runs, "metrics"),
            "tags": _rows(runs, "tags"),
            "charts": figures,
            "undrawn": keys[MAX_CHARTS:],
            "x": x,
            "x_urls": {axis: _with(request, x=axis) for axis in charts.X_AXES},
        },
    )


async def artifact_download(request: web.Request) -> web.StreamResponse:
    """302 to the store's URL for one file: presigned for S3, signed for the local store."""
    run = await request.app[STORES].runs.get(parse_run_id(request.match_info["run_id"]))
    path = query_str(request, "path", required=True)
    assert path is not None
    location = await files.file_url(request, run.info, path)
    raise web.HTTPFound(location, headers={"Cache-Control": "no-store"})


def _labels(runs: list[Run]) -> dict[str, str]:
    """Legend labels: run names, with a short id where two runs share a name."""
    names = [run.info.run_name or run.info.run_id[:8] for run in runs]
    return {
        run.info.run_id: f"{name} ({run.info.run_id[:6]})" if names.count(name) > 1 else name
        for run, name in zip(runs, names, strict=True)
    }


def _rows(runs: list[Run], kind: str) -> list[dict[str, Any]]:
    """One row per key across runs: the values in run order and whether they differ."""
    values = [getattr(run.data, kind) for run in runs]
    rows = []
    for key in sorted({k for v in values for k in v}):
        cells = [v.get(key) for v in values]
        same = all(c == cells[0] for c in cells) if kind != "metrics" else _same_floats(cells)
        rows.append({"key": key, "cells": cells, "differs": not same})
    return rows


def _same_floats(cells: list[Any]) -> bool:
    first = cells[0]
    return all((c is None and first is None) or (c == first) or (c != c and first != first) for c in cells)


def _with(request: web.Request, **changes: str) -> str:
    """This page's URL with some query parameters replaced."""
    query = [(k, v) for k, v in request.query.items() if k not in changes]
    return views.url(request.path, [*query, *changes.items()])


ROUTES: list[tuple[str, Callable[[web.Request], Awaitable[web.StreamResponse]], Access]] = [
    ("/", experiments_page, READ),
    ("/experiments/{experiment_id}", experiment_page, READ_PATH),
    ("/runs/{run_id}", run_page, READ_PATH),
    ("/runs/{run_id}/artifacts/download", artifact_download, READ_PATH),
    ("/compare", compare_page, READ_HANDLER),
]
"""The GET pages and what each requires when authentication is on: the list shows only what the user
may read, the path's experiment (or run's experiment) must be readable, and /compare checks each run."""
