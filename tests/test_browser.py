"""The run browser in a real browser: Debian's headless Chromium driven by Playwright, against a real
`kiseki server` process (local artifact store) seeded through the SDK.

Screenshots of every page land in test-output/screenshots/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import kiseki
from kiseki import fluent
from tests.chromium import SCREENSHOTS, needs_chromium

PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000100000001008020000009091683600000017494441547801"
    "63fccf8004c0a4c0c4a0a1fa0f29a30d18100e0b9ab48a34c1e10000000049454e44ae426082"
)

pytestmark = needs_chromium
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install playwright)"
)


@dataclass(frozen=True, slots=True)
class Seeded:
    url: str
    experiment: str
    experiment_id: str
    runs: dict[str, str]
    """Run name → run id."""
    notes: bytes


@pytest.fixture(scope="module")
def seeded(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """An experiment of four runs (one a child) with params, curves and artifacts, logged by the SDK."""
    kiseki.set_tracking_uri(tracking_uri)
    name = f"browser-{uuid.uuid4().hex[:6]}"
    experiment = kiseki.set_experiment(name)
    t0 = int(time.time() * 1000) - 3_600_000
    notes = b"epoch 1: loss 0.92\nepoch 2: loss 0.41\n<b>not markup</b>\n"
    folder = tmp_path_factory.mktemp("artifacts")
    (folder / "curve.png").write_bytes(PNG)
    runs: dict[str, str] = {}
    shapes = {"baseline": (0.1, 1.0, 0.80), "wide-net": (0.01, 0.7, 0.86), "deep-net": (0.001, 0.5, 0.91)}
    for run_name, (lr, scale, top) in shapes.items():
        with kiseki.start_run(run_name=run_name) as run:
            runs[run_name] = run.info.run_id
            kiseki.log_params({"lr": lr, "optimizer": "adam", "layers": 4 if run_name != "deep-net" else 12})
            kiseki.set_tag("team", "vision")
            for step in range(300):
                stamp = t0 + step * 2_000 + (len(runs) * 500 if step > 150 else 0)
                loss = scale * math.exp(-step / 60) + 0.05 + 0.02 * math.sin(step / 3)
                kiseki.log_metric("loss", loss, step=step, timestamp=stamp)
                if step % 10 == 0:
                    kiseki.log_metric("val/acc", top * (1 - math.exp(-step / 80)), step=step, timestamp=stamp)
            kiseki.log_text(notes.decode(), "notes/train.log")
            kiseki.log_artifact(folder / "curve.png", "plots")
            if run_name == "baseline":
                with kiseki.start_run(run_name="baseline-eval", nested=True) as child:
                    runs["baseline-eval"] = child.info.run_id
                    kiseki.log_metric("val/acc", 0.79, step=0)
    kiseki.flush()
    with kiseki.Client(tracking_uri) as client:
        client.set_terminated(runs["wide-net"], status="FAILED")
    yield Seeded(tracking_uri, name, experiment.experiment_id, runs, notes)
    while kiseki.active_run():
        kiseki.end_run()
    fluent._experiment_id = None


@pytest.fixture
def page(browser: Any, problems: list[str]) -> Iterator[Any]:
    """A fresh tab; the test fails if the page logged an error (a CSP violation, a failed load…)."""
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    tab = context.new_page()
    tab.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda error: problems.append(str(error)))
    yield tab
    context.close()
    assert not problems, f"the browser reported errors: {problems}"


def shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def run_names(page: Any) -> list[str]:
    return [text.strip() for text in page.locator("#runs tbody td.name a").all_inner_texts()]


def test_find_filter_sort_and_compare_runs(page: Any, seeded: Seeded) -> None:
    expect = sync_api.expect
    page.goto(seeded.url + "/")
    expect(page.locator("h1")).to_have_text("Experiments")
    shoot(page, "1-experiments")
    page.get_by_role("link", name=seeded.experiment, exact=True).click()
    expect(page).to_have_url(f"{seeded.url}/experiments/{seeded.experiment_id}")
    assert run_names(page) == ["deep-net", "wide-net", "baseline-eval", "baseline"]
    expect(page.locator("#runs thead")).to_contain_text("val/acc")
    shoot(page, "2-experiment")

    page.get_by_label("Filter runs").fill("params.lr < 0.05 AND tags.team = 'vision'")
    page.get_by_label("Filter runs").press("Enter")
    expect(page.locator("#runs tbody tr")).to_have_count(2)
    page.locator("#runs thead").get_by_role("link", name="val/acc").click()
    expect(page.locator("th[aria-sort=descending]")).to_contain_text("val/acc")
    assert run_names(page) == ["deep-net", "wide-net"]
    page.locator("#runs thead").get_by_role("link", name="val/acc").click()
    expect(page.locator("th[aria-sort=ascending]")).to_contain_text("val/acc")
    assert run_names(page) == ["wide-net", "deep-net"]
    expect(page.get_by_label("Filter runs")).to_have_value("params.lr < 0.05 AND tags.team = 'vision'")

    compare = page.locator("button[data-compare]")
    expect(compare).to_be_disabled()
    page.get_by_label("Select wide-net").check()
    page.get_by_label("Select deep-net").check()
    expect(compare).to_have_text("Compare 2 runs")
    compare.click()
    expect(page).to_have_url(
        f"{seeded.url}/compare?runs={seeded.runs['wide-net']}&runs={seeded.runs['deep-net']}"
    )
    differing = page.locator("#compare-params tr.diff th").all_inner_texts()
    assert differing == ["layers", "lr"], differing
    assert page.locator("#compare-params tr.same th").all_inner_texts() == ["optimizer"]
    loss = page.locator("figure.chart", has_text="loss")
    curves = loss.locator(".x-step path.line")
    expect(curves).to_have_count(2)
    assert all(len(d) > 100 for d in curves.evaluate_all("paths => paths.map(p => p.getAttribute('d'))"))
    expect(loss.locator(".legend li")).to_have_text(["wide-net", "deep-net"])
    shoot(page, "5-compare")


def test_filter_errors_show_inline(page: Any, seeded: Seeded) -> None:
    page.goto(f"{seeded.url}/experiments/{seeded.experiment_id}")
    page.get_by_label("Filter runs").fill("metrics.loss < 0.1 AND")
    page.get_by_role("button", name="Search").click()
    alert = page.get_by_role("alert")
    sync_api.expect(alert).to_contain_text("Filter error at column 23")
    sync_api.expect(alert.locator(".caret")).to_contain_text("^")
    shoot(page, "3-filter-error")


def test_columns_can_be_chosen(page: Any, seeded: Seeded) -> None:
    page.goto(f"{seeded.url}/experiments/{seeded.experiment_id}")
    page.get_by_text("Columns", exact=True).click()
    shoot(page, "2b-columns")
    page.get_by_label("Find a key").fill("lay")
    visible = page.locator("details.chooser label:visible").all_inner_texts()
    assert [v.split()[0] for v in visible] == ["layers"], visible
    page.get_by_label("Find a key").fill("")
    page.locator("fieldset", has_text="Params").get_by_role("button", name="none").click()
    page.get_by_role("button", name="Apply").click()
    header = page.locator("#runs thead").inner_text()
    assert "lr" not in header.split() and "loss" in header


def test_run_page_charts_switch_to_time_and_artifacts_download(page: Any, seeded: Seeded) -> None:
    expect = sync_api.expect
    run_id = seeded.runs["baseline"]
    page.goto(f"{seeded.url}/runs/{run_id}")
    expect(page.locator("h1")).to_contain_text("baseline")
    expect(page.locator("#info")).to_contain_text("baseline-eval")
    loss = page.locator("figure.chart", has_text="loss")
    step_path = loss.locator(".x-step path.line")
    time_path = loss.locator(".x-time path.line")
    expect(step_path).to_be_visible()
    expect(time_path).to_be_hidden()
    assert len(step_path.get_attribute("d") or "") > 500
    shoot(page, "4-run")

    page.evaluate("window.notReloaded = true")
    page.locator("#charts").get_by_role("link", name="Time").click()
    expect(time_path).to_be_visible()
    expect(step_path).to_be_hidden()
    expect(loss).to_contain_text("time since first point (min)")
    assert page.evaluate("window.notReloaded") is True, "the switch needs no reload"
    assert page.url.endswith("x=time")
    assert step_path.get_attribute("d") != time_path.get_attribute("d")
    shoot(page, "4-run-time")

    artifacts = page.locator("#artifacts")
    artifacts.get_by_role("link", name="notes/").click()
    artifacts.get_by_role("link", name="train.log").click()
    expect(page.locator("pre.text-preview")).to_have_text(seeded.notes.decode())
    with page.expect_download() as download:
        artifacts.locator("table.files").get_by_role("link", name="Download").click()
    assert Path(download.value.path()).read_bytes() == seeded.notes
    assert download.value.suggested_filename == "train.log"
    shoot(page, "6-artifacts")

    artifacts.get_by_role("link", name="root").click()
    artifacts.get_by_role("link", name="plots/").click()
    artifacts.get_by_role("link", name="curve.png").click()
    image = page.locator(".preview img")
    expect(image).to_be_visible()
    assert image.evaluate("img => img.complete && img.naturalWidth") == 16, (
        "the image loaded via the redirect"
    )


def test_error_page_and_narrow_screens(page: Any, seeded: Seeded, problems: list[str]) -> None:
    response = page.goto(f"{seeded.url}/runs/{'0' * 32}")
    assert response.status == 404
    sync_api.expect(page.locator("h1")).to_have_text("Not Found")
    shoot(page, "7-not-found")
    assert [p for p in problems if "404" in p], "the browser saw the 404"
    problems.clear()
    page.set_viewport_size({"width": 420, "height": 860})
    page.goto(f"{seeded.url}/experiments/{seeded.experiment_id}")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 420, f"the page itself does not scroll sideways on a phone (only its table): {width}"
    shoot(page, "8-experiment-narrow")
    page.goto(f"{seeded.url}/runs/{seeded.runs['deep-net']}")
    assert page.evaluate("document.documentElement.scrollWidth") <= 420
    shoot(page, "9-run-narrow")
