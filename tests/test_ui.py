"""The run browser's pages through the in-process test client: content, sorting, filtering, pages,
compare, artifacts, escaping of untrusted values, security headers and HTML error pages."""

from __future__ import annotations

import html
import re
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pydantic import SecretStr

from kiseki_server.app import create_app
from kiseki_server.config import Settings
from tests.conftest import free_port
from tests.helpers import call, new_experiment, new_run

XSS = "<script>alert(1)</script>"
XSS_FILE = "<img src=x onerror=alert(1)>.txt"  # an artifact name cannot hold '/', so no </script>
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)


@pytest.fixture
async def ui(settings: Settings, tmp_path: Path, aiohttp_client: Any) -> TestClient:
    """The service with the local artifact store (the default of `kiseki server`). Settings first: the
    test's database must outlive the app (fixtures tear down in reverse order)."""
    local = settings.model_copy(update={"default_artifact_root": (tmp_path / "artifacts").as_uri()})
    client: TestClient = await aiohttp_client(create_app(local))
    return client


async def page(client: TestClient, path: str, status: int = 200, **kwargs: Any) -> str:
    response = await client.get(path, **kwargs)
    text = await response.text()
    assert response.status == status, f"GET {path}: expected {status}, got {response.status}: {text[:500]}"
    assert response.content_type == "text/html", f"GET {path}: {response.content_type}"
    csp = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp, f"GET {path}: CSP is {csp!r}"
    return text


async def log(
    client: TestClient,
    run_id: str,
    *,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    metrics: dict[str, list[float]] | None = None,
) -> None:
    body = {
        "params": [{"key": k, "value": v} for k, v in (params or {}).items()],
        "tags": [{"key": k, "value": v} for k, v in (tags or {}).items()],
        "metric_columns": {
            k: {
                "steps": list(range(len(v))),
                "values": v,
                "timestamps": [1_700_000_000_000 + 1000 * i for i in range(len(v))],
            }
            for k, v in (metrics or {}).items()
        },
    }
    await call(client, "POST", f"/api/v1/runs/{run_id}/batch", json=body)


async def upload(client: TestClient, run_id: str, path: str, data: bytes) -> None:
    plan = await call(
        client,
        "POST",
        f"/api/v1/runs/{run_id}/artifacts/uploads",
        json={"files": [{"path": path, "size": len(data)}]},
    )
    async with client.session.put(plan["uploads"][0]["url"], data=data) as response:
        assert response.status == 200, await response.text()


def row_names(text: str) -> list[str]:
    """Run names in the runs table, in order."""
    table = text.split('id="runs"', 1)[1].split("</table>", 1)[0]
    return [
        html.unescape(n)
        for n in re.findall(r'<td class="name"[^>]*><a href="/runs/[0-9a-f]+">([^<]*)</a>', table)
    ]


def links(text: str, rel: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(rf'<a href="([^"]*)" rel="{rel}">', text)]


async def experiment_with_runs(client: TestClient, n: int, name: str = "exp") -> tuple[str, list[str]]:
    experiment_id = await new_experiment(client, name)
    run_ids = []
    for i in range(n):
        run_id = await new_run(
            client, experiment_id, run_name=f"run-{i}", start_time=1_700_000_000_000 + i * 1000
        )
        await log(
            client, run_id, params={"lr": f"0.{i}", "model": "bert"}, metrics={"acc": [0.1, 0.5 + i / 100]}
        )
        run_ids.append(run_id)
    return experiment_id, run_ids


# --- experiments ---------------------------------------------------------------------------------


async def test_experiments_page_lists_names_run_counts_and_links(ui: TestClient) -> None:
    first, _ = await experiment_with_runs(ui, 3, "vision")
    second = await new_experiment(ui, "nlp")
    text = await page(ui, "/")
    assert "vision" in text and "nlp" in text
    assert f'href="/experiments/{first}"' in text and f'href="/experiments/{second}"' in text
    rows = re.findall(
        r'<td class="name"><a href="/experiments/(\d+)">[^<]*</a></td>\s*<td class="num">(\d+)', text
    )
    assert dict(rows) == {first: "3", second: "0"}, rows
    assert text.index("nlp") < text.index("vision"), "experiments are listed newest first"
    assert "just now" in text, "last activity is shown"

    filtered = await page(ui, "/?name=vis")
    assert "vision" in filtered and "nlp" not in filtered


async def test_experiments_page_pages_by_keyset(ui: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from kiseki_server.web import pages

    monkeypatch.setattr(pages, "EXPERIMENTS_PAGE", 2)
    for name in ("a", "b", "c"):
        await new_experiment(ui, name)
    text = await page(ui, "/")
    (next_url,) = links(text, "next")
    assert "page_token=" in next_url
    second = await page(ui, next_url)
    assert '<a href="/experiments/1">a</a>' in second and not links(second, "next")
    assert links(second, "first") == ["/"]


# --- one experiment --------------------------------------------------------------------------------


async def test_experiment_page_shows_runs_with_common_params_and_metrics(ui: TestClient) -> None:
    experiment_id, run_ids = await experiment_with_runs(ui, 3)
    rare = await new_run(ui, experiment_id, run_name="rare")
    await log(ui, rare, params={"only-here": "x"})
    await call(
        ui, "PATCH", f"/api/v1/runs/{run_ids[0]}", json={"status": "FINISHED", "end_time": 1_700_000_090_500}
    )
    text = await page(ui, f"/experiments/{experiment_id}")
    assert row_names(text) == ["rare", "run-2", "run-1", "run-0"], "newest first by default"
    header = text.split("<thead>", 1)[1].split("</thead>", 1)[0]
    for column in ("Name", "Status", "Started", "Duration", ">lr<", ">model<", ">only-here<", ">acc<"):
        assert column in header, column
    assert header.index(">lr<") < header.index(">only-here<"), "the most common keys come first"
    assert '<span class="status status-finished">finished</span>' in text
    assert "1 min 30 s" in text, "duration of the finished run"
    assert '<td class="num">0.52</td>' in text, "latest metric value, right-aligned"
    for run_id in run_ids:
        assert f'name="runs" value="{run_id}" form="compare-form"' in text


async def test_experiment_page_columns_can_be_chosen(ui: TestClient) -> None:
    experiment_id, _ = await experiment_with_runs(ui, 2)
    text = await page(ui, f"/experiments/{experiment_id}?cols=1&param=model")
    header = text.split("<thead>", 1)[1].split("</thead>", 1)[0]
    assert ">model<" in header and ">lr<" not in header and ">acc<" not in header
    assert 'name="param" value="lr">' in text, "unchosen keys are offered in the chooser"
    assert 'name="param" value="model" checked>' in text
    sort_link = re.search(r'href="([^"]*)" title="Sort by Name"', text)
    assert sort_link and "cols=1" in sort_link.group(1) and "param=model" in sort_link.group(1)


async def test_filter_narrows_runs_and_errors_show_inline_with_the_column(ui: TestClient) -> None:
    experiment_id, _ = await experiment_with_runs(ui, 4)
    text = await page(ui, f"/experiments/{experiment_id}", params={"filter": "metrics.acc >= 0.52"})
    assert row_names(text) == ["run-3", "run-2"]

    text = await page(ui, f"/experiments/{experiment_id}", params={"filter": "metrics.acc >"})
    assert 'role="alert"' in text and 'aria-invalid="true"' in text
    assert "error at column 14:</strong> expected a value after &#39;&gt;&#39; at column 14" in text
    assert '<pre class="caret">metrics.acc &gt;\n' + " " * 13 + "^</pre>" in text, "a caret under the column"
    assert 'value="metrics.acc &gt;"' in text, "the filter stays in the box to be fixed"

    text = await page(ui, f"/experiments/{experiment_id}", params={"filter": "status = 'DONE'"})
    assert "Filter error" in text and "FINISHED" in text, "semantic errors name the valid values"


@pytest.mark.parametrize(
    ("order_by", "expected", "arrow"),
    [
        ("metrics.acc DESC", ["run-3", "run-2", "run-1", "run-0"], "▼"),
        ("metrics.acc ASC", ["run-0", "run-1", "run-2", "run-3"], "▲"),
        ("params.lr DESC", ["run-3", "run-2", "run-1", "run-0"], "▼"),
        ("run_name ASC", ["run-0", "run-1", "run-2", "run-3"], "▲"),
    ],
)
async def test_sorting_by_clicking_headers(
    ui: TestClient, order_by: str, expected: list[str], arrow: str
) -> None:
    experiment_id, _ = await experiment_with_runs(ui, 4)
    text = await page(ui, f"/experiments/{experiment_id}", params={"order_by": order_by})
    assert row_names(text) == expected
    ident, direction = order_by.rsplit(" ", 1)
    flipped = "ASC" if direction == "DESC" else "DESC"
    sorted_header = re.search(
        r'<th scope="col" class="[^"]*" aria-sort="(\w+)"><a class="sort" href="([^"]*)"', text
    )
    assert sorted_header, "the sorted column is marked"
    assert sorted_header.group(1) == ("descending" if direction == "DESC" else "ascending")
    assert f"order_by={ident.replace('.', '.')}%20{flipped}" in html.unescape(sorted_header.group(2))
    assert f'<span class="arrow" aria-hidden="true">{arrow}</span>' in text


async def test_sort_links_quote_odd_keys(ui: TestClient) -> None:
    experiment_id = await new_experiment(ui)
    for i, value in enumerate(["0.3", "0.1", "0.2"]):
        run_id = await new_run(ui, experiment_id, run_name=f"r{i}")
        await log(ui, run_id, params={"batch size": value})
    text = await page(ui, f"/experiments/{experiment_id}")
    link = re.search(r'href="([^"]*)" title="Sort by batch size"', text)
    assert link, text
    sorted_page = await page(ui, html.unescape(link.group(1)))
    assert row_names(sorted_page) == ["r1", "r2", "r0"]


async def test_pagination_uses_keyset_tokens_with_next_and_first_links(ui: TestClient) -> None:
    experiment_id, _ = await experiment_with_runs(ui, 7)
    url = f"/experiments/{experiment_id}?order_by=metrics.acc%20DESC&max_results=3"
    seen: list[str] = []
    pages = 0
    while url:
        text = await page(ui, url)
        seen += row_names(text)
        pages += 1
        if pages > 1:
            assert links(text, "first") == [
                f"/experiments/{experiment_id}?order_by=metrics.acc%20DESC&max_results=3"
            ]
        following = links(text, "next")
        assert all("page_token=" in u and "offset" not in u for u in following)
        url = following[0] if following else ""
    assert pages == 3
    assert seen == [f"run-{i}" for i in range(6, -1, -1)]
    assert "Runs 7\u20137" in text


async def test_deleted_runs_are_behind_a_toggle(ui: TestClient) -> None:
    experiment_id, run_ids = await experiment_with_runs(ui, 3)
    await call(ui, "DELETE", f"/api/v1/runs/{run_ids[1]}")
    text = await page(ui, f"/experiments/{experiment_id}")
    assert row_names(text) == ["run-2", "run-0"]
    toggle = re.search(r'<a href="([^"]*)" id="show-deleted"', text)
    assert toggle and "view=deleted" in toggle.group(1)
    deleted = await page(ui, html.unescape(toggle.group(1)))
    assert row_names(deleted) == ["run-1"]
    assert '<span class="badge badge-deleted">deleted</span>' in deleted
    everything = await page(ui, f"/experiments/{experiment_id}?view=all")
    assert row_names(everything) == ["run-2", "run-1", "run-0"]


# --- one run -------------------------------------------------------------------------------------------


async def test_run_page_shows_info_family_data_and_charts(ui: TestClient) -> None:
    experiment_id = await new_experiment(ui, "exp")
    parent = await new_run(ui, experiment_id, run_name="sweep")
    child = await new_run(ui, experiment_id, run_name="trial-1", parent_run_id=parent)
    await log(
        ui,
        parent,
        params={"lr": "0.01"},
        tags={"team": "nlp"},
        metrics={"loss": [1.0, 0.5, float("nan"), 0.25, 0.2], "acc": [0.5]},
    )
    text = await page(ui, f"/runs/{parent}")
    assert "<h1>sweep" in text and f"<code>{parent}</code>" in text
    assert f'<a href="/runs/{child}">trial-1</a>' in text, "children are linked"
    assert f'<a href="/experiments/{experiment_id}">exp</a>' in text
    assert '<th scope="row">lr</th><td class="break">0.01</td>' in text
    assert '<th scope="row">team</th><td class="break">nlp</td>' in text
    assert '<th scope="row">loss</th><td class="num">0.2</td>' in text
    acc, loss = text.split("<figcaption")[1:3]
    assert re.findall(r'<g class="view x-(step|time)">', acc + loss) == ["step", "time"] * 2, (
        "a chart per metric, both x axes"
    )
    loss_step = re.findall(r'<path class="line" d="([^"]+)"', loss)[0]
    assert loss_step.count("M") == 2, f"NaN breaks the line in two: {loss_step}"
    assert '<path class="line"' not in acc and acc.count('<path class="dots"') == 2, (
        "a single point is drawn as a visible marker in each view"
    )
    assert "1 NaN or infinite value not drawn" in text
    assert 'data-x="step"' in text

    child_page = await page(ui, f"/runs/{child}?x=time")
    assert f'<a href="/runs/{parent}">sweep</a>' in child_page, "the parent is linked"
    assert '<section class="charts" id="charts" data-x="time">' in child_page
    await page(ui, f"/runs/{child}?x=wall", status=400)


async def test_run_page_browses_previews_and_downloads_artifacts(ui: TestClient) -> None:
    run_id = await new_run(ui)
    await upload(ui, run_id, "notes.txt", b"hello <b>world</b>\n")
    await upload(ui, run_id, "plots/loss.png", PNG)
    await upload(ui, run_id, "model/weights.bin", b"\x00\x01" * 1000)
    text = await page(ui, f"/runs/{run_id}")
    listing = text.split('id="artifacts"', 1)[1]
    assert f'href="/runs/{run_id}?path=model#artifacts"' in listing and "model/</a>" in listing
    assert (
        f'<a class="download" href="/runs/{run_id}/artifacts/download?path=notes.txt" download="notes.txt">'
        in listing
    )
    assert '<td class="num">19 B</td>' in listing

    folder = await page(ui, f"/runs/{run_id}?path=plots")
    assert '<a href="/runs/' in folder and ">plots</a>" in folder.split('aria-label="Folder"', 1)[1]
    assert f'href="/runs/{run_id}?path=plots&amp;view=plots%2Floss.png#artifacts"' in folder

    preview = await page(ui, f"/runs/{run_id}?view=notes.txt")
    assert '<pre class="text-preview">hello &lt;b&gt;world&lt;/b&gt;\n</pre>' in preview, "text shows as text"
    image = await page(ui, f"/runs/{run_id}?path=plots&view=plots/loss.png")
    assert f'<img src="/runs/{run_id}/artifacts/download?path=plots%2Floss.png"' in image
    binary = await page(ui, f"/runs/{run_id}?path=model&view=model/weights.bin")
    assert "a binary file" in binary

    response = await ui.get(f"/runs/{run_id}/artifacts/download?path=plots/loss.png", allow_redirects=False)
    assert response.status == 302
    location = response.headers["Location"]
    assert f"/api/v1/runs/{run_id}/artifacts/data?" in location and "signature=" in location
    async with ui.session.get(location) as fetched:
        assert await fetched.read() == PNG
    await page(ui, f"/runs/{run_id}/artifacts/download?path=missing.txt", status=404)
    await page(ui, f"/runs/{run_id}/artifacts/download?path=plots", status=400)
    missing = await page(ui, f"/runs/{run_id}?path=nowhere")
    assert "has no artifact at &#39;nowhere&#39;" in missing, (
        "storage trouble is a message, not a failed page"
    )


async def test_run_page_reports_unreachable_storage_inline(settings: Settings, aiohttp_client: Any) -> None:
    """S3 that does not answer (a closed port): the artifacts section says so, the page still renders."""
    down = settings.model_copy(
        update={
            "s3_endpoint_url": f"http://127.0.0.1:{free_port()}",
            "s3_access_key_id": "key",
            "s3_secret_access_key": SecretStr("secret"),
            "s3_max_attempts": 1,
        }
    )
    client: TestClient = await aiohttp_client(create_app(down))
    run_id = await new_run(client)
    text = await page(client, f"/runs/{run_id}")
    notice = text.split('id="artifacts"', 1)[1]
    assert '<p class="notice">S3 storage at http://127.0.0.1:' in notice and "unreachable" in notice


# --- compare -------------------------------------------------------------------------------------------


async def test_compare_highlights_differences_and_overlays_curves(ui: TestClient) -> None:
    experiment_id = await new_experiment(ui, "exp")
    a = await new_run(ui, experiment_id, run_name="alpha")
    b = await new_run(ui, experiment_id, run_name="beta")
    await log(ui, a, params={"lr": "0.1", "model": "bert"}, metrics={"loss": [1.0, 0.5, 0.3], "acc": [0.7]})
    await log(ui, b, params={"lr": "0.2", "model": "bert", "extra": "y"}, metrics={"loss": [0.9, 0.6]})
    text = await page(ui, f"/compare?runs={a}&runs={b}")
    params = text.split('id="compare-params"', 1)[1].split("</table>", 1)[0]
    rows = dict(
        re.findall(r'<tr class="(diff|same)">\s*<th scope="row">([^<]*)</th>', params)[i][::-1]
        for i in range(3)
    )
    assert rows == {"extra": "diff", "lr": "diff", "model": "same"}
    assert "2 of 3 differ" in text
    metrics = text.split('id="compare-metrics"', 1)[1].split("</table>", 1)[0]
    assert '<td class="num">0.3</td>' in metrics and '<td class="num">0.6</td>' in metrics
    charts = text.split('id="charts"', 1)[1]
    loss = charts.split("<figcaption", 2)[2]
    assert loss.split('<g class="view x-time">')[0].count('<path class="line"') == 2, "both runs' curves"
    assert "<title>alpha</title>" in loss and "<title>beta</title>" in loss
    legend = loss.split('<ul class="legend">', 1)[1].split("</ul>", 1)[0]
    assert "<span>alpha</span>" in legend and "<span>beta</span>" in legend
    assert 'stroke="#2563eb"' in legend and 'stroke="#dc2626"' in legend


@pytest.mark.parametrize(
    ("query", "status"),
    [("", 400), ("runs=0123", 400), ("runs=" + "a" * 32, 400), ("runs={a}&runs=" + "f" * 32, 404)],
)
async def test_compare_rejects_bad_selections(ui: TestClient, query: str, status: int) -> None:
    a = await new_run(ui)
    text = await page(ui, "/compare?" + query.format(a=a), status=status)
    assert '<p class="error-status">' in text


# --- extreme values --------------------------------------------------------------------------------------

PAGE_SECONDS = 2.0
"""A page with the worst charts and times there are must still come back about as fast as any page."""
FAR = 2**62
"""A start time in microseconds sent as milliseconds would be ~1.7e15; this is far past year 9999."""


async def timed_page(client: TestClient, path: str) -> str:
    started = time.perf_counter()
    text = await page(client, path)
    elapsed = time.perf_counter() - started
    assert elapsed < PAGE_SECONDS, f"GET {path} took {elapsed:.2f} s"
    return text


async def test_extreme_values_and_times_render_every_page_quickly(ui: TestClient) -> None:
    """Values ±1e308 (once froze the event loop for good), subnormals (once a ZeroDivisionError), a
    point logged once, int64 steps and timestamps, and a start time past year 9999 (once a 500 on every
    page that listed the run): every page answers, quickly, and says what it could not show."""
    experiment_id = await new_experiment(ui, "extremes")
    huge = await new_run(ui, experiment_id, run_name="huge", start_time=1_700_000_000_000)
    far = await new_run(ui, experiment_id, run_name="far", start_time=FAR)
    await call(ui, "PATCH", f"/api/v1/runs/{far}", json={"status": "FINISHED", "end_time": 2**63 - 1})
    big = 2**63 - 1
    columns = {
        "huge": {"values": [-1e308, 1e308], "steps": [0, 1], "timestamps": [1_700_000_000_000] * 2},
        "tiny": {"values": [0.0, 4e-323], "steps": [0, 1], "timestamps": [1_700_000_000_000] * 2},
        "once": {"values": [0.5], "steps": [3], "timestamps": [1_700_000_000_000]},
        "gaps": {"values": ["NaN", 1.0, "Infinity", "-Infinity", 2.0], "steps": [0, 1, 2, 3, 4]},
        "edges": {"values": [1.0, 2.0, 3.0], "steps": [-(2**63), 0, big], "timestamps": [0, FAR, big]},
    }
    for run_id in (huge, far):
        await call(ui, "POST", f"/api/v1/runs/{run_id}/batch", json={"metric_columns": columns})

    listing = await timed_page(ui, "/")
    assert "extremes" in listing and "in the future" in listing, "last activity past this server's clock"
    runs = await timed_page(ui, f"/experiments/{experiment_id}")
    assert f"{FAR} ms (out of range)" in runs, "a time past year 9999 shows as its raw number"
    assert "2023-11-14 22:13:20 UTC" in runs, "times in range say they are UTC"

    for run_id in (huge, far):
        text = await timed_page(ui, f"/runs/{run_id}")
        await timed_page(ui, f"/runs/{run_id}?x=time")
        charts_html = text.split('id="charts"', 1)[1].split('id="artifacts"', 1)[0]
        assert charts_html.count('<svg class="plot"') == 5, "every metric is drawn"
        assert "1.0e308" in charts_html and "4e-323" in charts_html, "huge and tiny tick labels"
        assert "3 NaN or infinite values not drawn" in charts_html
        assert charts_html.count('<path class="dots"') >= 2, "the point logged once is a marker"
        assert not re.search(r"\b(nan|inf)\b", charts_html.replace("NaN or infinite", "")), "no NaN in SVG"
    far_page = await timed_page(ui, f"/runs/{far}")
    info = far_page.split('id="info"', 1)[1].split("</section>", 1)[0]
    assert f"{FAR} ms (out of range)" in info and f"{2**63 - 1} ms (out of range)" in info

    compare = await timed_page(ui, f"/compare?runs={huge}&runs={far}")
    assert f"{FAR} ms (out of range)" in compare and "2023-11-14 22:13:20 UTC" in compare
    assert compare.split('id="charts"', 1)[1].count('<svg class="plot"') == 5
    await timed_page(ui, f"/compare?runs={huge}&runs={far}&x=time")
    health = await ui.get("/healthz")
    assert health.status == 200


async def test_started_says_utc_on_every_page(ui: TestClient) -> None:
    experiment_id, (a, b) = await experiment_with_runs(ui, 2)
    iso = "2023-11-14T22:13:20.000Z"
    when = f'<time datetime="{iso}" title="{iso}">2023-11-14 22:13:20 UTC</time>'
    for path in (f"/experiments/{experiment_id}", f"/runs/{a}", f"/compare?runs={a}&runs={b}"):
        assert when in await page(ui, path), f"{path}: the start time is a UTC <time>"


# --- untrusted values ------------------------------------------------------------------------------------


async def test_untrusted_values_are_escaped_everywhere(ui: TestClient) -> None:
    experiment_id = await new_experiment(ui, XSS)
    a = await new_run(ui, experiment_id, run_name=XSS, tags={XSS: XSS})
    b = await new_run(ui, experiment_id, run_name="plain")
    for run_id in (a, b):
        await log(ui, run_id, params={XSS: XSS}, metrics={XSS: [1.0, 2.0]})
    await upload(ui, a, XSS_FILE, XSS.encode())
    await call(ui, "POST", f"/api/v1/experiments/{experiment_id}/tags", json={"key": XSS, "value": XSS})
    pages = {
        "experiments": "/",
        "experiment": f"/experiments/{experiment_id}",
        "sorted by the odd param": f"/experiments/{experiment_id}?order_by=params.%60{XSS}%60",
        "run": f"/runs/{a}",
        "artifact preview": f"/runs/{a}?view={XSS_FILE}",
        "compare": f"/compare?runs={a}&runs={b}",
        "filter error": f"/experiments/{experiment_id}?filter={XSS}",
    }
    for name, path in pages.items():
        text = await page(ui, path)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text or "&lt;img src=x" in text, (
            f"{name}: value missing"
        )
        elements = Elements.of(text)
        scripts = [attrs for tag, attrs in elements.tags if tag == "script"]
        assert [s["src"].split("?")[0] for s in scripts] == ["/static/kiseki.js"], f"{name}: {scripts}"
        assert not elements.script_text, f"{name}: inline script {elements.script_text}"
        handlers = [(tag, a) for tag, attrs in elements.tags for a in attrs if a.startswith("on")]
        assert not handlers, f"{name}: event handler attributes {handlers}"
        assert not [
            t for t, _ in elements.tags if t in ("img", "iframe", "object") and name != "artifact preview"
        ]
        assert not [a for _, attrs in elements.tags for a in attrs if a == "style"], f"{name}: inline style"


class Elements(HTMLParser):
    """Every start tag with its attributes, and any text inside <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.script_text = ""
        self._in_script = False

    @classmethod
    def of(cls, text: str) -> Elements:
        parser = cls()
        parser.feed(text)
        parser.close()
        return parser

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


# --- errors and plumbing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/experiments/424242", 404, "experiment 424242 not found"),
        ("/experiments/abc", 400, "experiment_id must be a decimal experiment id"),
        ("/runs/xyz", 400, "run_id must be a 32-hex run id"),
        ("/runs/" + "0" * 32, 404, "not found"),
        ("/no/such/page", 404, "Not Found"),
        ("/experiments/1?view=sideways", 400, "view must be one of"),
    ],
)
async def test_pages_outside_the_api_get_html_errors(
    ui: TestClient, path: str, status: int, message: str
) -> None:
    await new_experiment(ui)
    text = await page(ui, path, status=status)
    assert f'<p class="error-status">{status}</p>' in text and html.escape(message, quote=True) in text
    assert '<a href="/">Back to experiments</a>' in text


async def test_api_errors_stay_json(ui: TestClient) -> None:
    response = await ui.get("/api/v1/experiments/424242")
    assert response.status == 404 and response.content_type == "application/json"
    assert (await response.json())["error"]["code"] == "RESOURCE_DOES_NOT_EXIST"
    response = await ui.get("/api/v1/nothing-here")
    assert response.status == 404 and response.content_type == "application/json"


async def test_static_files_are_served(ui: TestClient) -> None:
    text = await page(ui, "/")
    for name in ("kiseki.css", "kiseki.js", "favicon.svg"):
        match = re.search(rf'"(/static/{re.escape(name)}\?v=\w+)"', text)
        assert match, f"{name} is linked with a version"
        response = await ui.get(match.group(1))
        assert response.status == 200 and len(await response.read()) > 100, name
