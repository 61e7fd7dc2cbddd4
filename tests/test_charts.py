"""The run browser's SVG chart geometry: round ticks, labels, gaps for NaN, dots, both x axes, and
bounded, correct charts for every float64 value and int64 step or timestamp."""

from __future__ import annotations

import itertools
import math
import re
import sys
import time

import jinja2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiseki_server.web import charts, views
from kiseki_server.web.render import TEMPLATES

INT64 = st.integers(-(2**63), 2**63 - 1)
EXTREMES = [
    sys.float_info.max,
    -sys.float_info.max,
    1e308,
    -1e308,
    5e-324,
    -5e-324,
    4e-323,
    2.2250738585072014e-308,
    0.0,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
]
VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True), st.sampled_from(EXTREMES)
)
RENDER_SECONDS = 2.0
"""CPU seconds of the drawing thread (other processes on a busy machine do not count): far above a
normal render (milliseconds), far below the hang it guards against (a loop over ~1e308 ticks)."""
"""Budget for drawing and rendering one chart, whatever its data (a few hundred points)."""


@pytest.mark.parametrize(
    ("lo", "hi", "ticks"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.213, 0.987, [0.2, 0.4, 0.6, 0.8, 1.0]),
        (3.0, 3.0, [2.6, 2.8, 3.0, 3.2, 3.4]),
        (0.0, 0.0, [-1.0, -0.5, 0.0, 0.5, 1.0]),
        (12_000.0, 1_500_000.0, [0.0, 500_000.0, 1_000_000.0, 1_500_000.0]),
        (-2.5, 7.1, [-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]),
        (-1e308, 1e308, [-1e308, -5e307, 0.0, 5e307, 1e308]),
        (0.0, 4e-323, [0.0, 1e-323, 2e-323, 3e-323, 4e-323]),
    ],
)
def test_nice_ticks_are_round_and_cover_the_data(lo: float, hi: float, ticks: list[float]) -> None:
    axis = charts.nice_ticks(lo, hi)
    assert axis.values == ticks
    assert axis.values[0] <= lo and axis.values[-1] >= hi
    assert axis.domain == (ticks[0], ticks[-1])
    assert all(math.isclose(b - a, axis.step) for a, b in itertools.pairwise(axis.values) if b - a < math.inf)


def test_ticks_that_would_overflow_are_left_out_and_the_data_bounds_the_axis() -> None:
    top = sys.float_info.max
    axis = charts.nice_ticks(-top, top)
    assert axis.values == [-1e308, 0.0, 1e308] and axis.labels == ["-1e308", "0", "1e308"]
    assert axis.domain == (-top, top)


@pytest.mark.parametrize(
    ("lo", "hi", "labels"),
    [
        (0.0, 0.4, ["0", "0.1", "0.2", "0.3", "0.4"]),
        (0.5, 0.50004, ["0.50000", "0.50001", "0.50002", "0.50003", "0.50004"]),
        (0.0, 1_000_000.0, ["0", "0.2M", "0.4M", "0.6M", "0.8M", "1.0M"]),
        (0.0, 80_000.0, ["0", "20k", "40k", "60k", "80k"]),
        (1e-6, 3e-6, ["1.0e-6", "1.5e-6", "2.0e-6", "2.5e-6", "3.0e-6"]),
        (-4.0, 4.0, ["-4", "-2", "0", "2", "4"]),
        (-1e308, 1e308, ["-1.0e308", "-5.0e307", "0", "5.0e307", "1.0e308"]),
        (0.0, 4e-323, ["0", "1e-323", "2e-323", "3e-323", "4e-323"]),
        (2e15, 6e15, ["2e15", "3e15", "4e15", "5e15", "6e15"]),
    ],
)
def test_tick_labels_share_one_compact_format_per_axis(lo: float, hi: float, labels: list[str]) -> None:
    assert charts.nice_ticks(lo, hi).labels == labels


def test_path_breaks_at_gaps_and_draws_lone_points_as_dots() -> None:
    xs = np.arange(6, dtype=np.float64)
    ys = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    drawn = np.array([True, True, False, True, False, True])
    assert charts.path_d(xs, ys, drawn) == ("M0,1L1,2", [(3.0, 4.0), (5.0, 6.0)])
    assert charts.path_d(xs, ys, np.zeros(6, dtype=bool)) == ("", [])


def series(
    values: list[float],
    *,
    label: str = "loss",
    start: int = 1_700_000_000_000,
    steps: list[int] | None = None,
    timestamps: list[int] | None = None,
) -> charts.Series:
    n = len(values)
    return charts.Series(
        label,
        np.array(steps, dtype=np.int64) if steps is not None else np.arange(n, dtype=np.int64) * 10,
        np.array(timestamps, dtype=np.int64)
        if timestamps is not None
        else start + np.arange(n, dtype=np.int64) * 90_000,
        np.array(values, dtype=np.float64),
        charts.styles(1)[0],
    )


def test_chart_has_a_step_and_a_time_view_with_the_same_y_axis() -> None:
    chart = charts.line_chart("loss", [series([1.0, 0.5, math.nan, 0.25, math.inf])])
    assert (chart.points, chart.skipped) == (3, 2)
    assert [t.label for t in chart.y_ticks] == ["0.2", "0.4", "0.6", "0.8", "1.0"]
    step, time_view = chart.views
    assert (step.x, time_view.x) == ("step", "time")
    assert [t.label for t in step.ticks] == ["0", "5", "10", "15", "20", "25", "30"], (
        "x covers the drawn points"
    )
    assert time_view.label == "time since first point (min)"
    assert [t.label for t in time_view.ticks] == ["0", "1", "2", "3", "4", "5"]
    assert step.lines[0].d.count("M") == 1 and step.lines[0].dots, "NaN and infinity leave gaps"
    for view in chart.views:
        for tick in view.ticks:
            assert chart.left - 0.1 <= tick.at <= chart.right + 0.1


def test_overlaid_runs_start_from_the_origin_of_the_time_axis_and_get_distinct_styles() -> None:
    early = series([1.0, 0.5, 0.2], label="a")
    late = series([0.9, 0.4], label="b", start=1_800_000_000_000)
    styled = [
        charts.Series(s.label, s.steps, s.timestamps, s.values, st)
        for s, st in zip((early, late), charts.styles(2), strict=True)
    ]
    chart = charts.line_chart("loss", styled)
    time_view = chart.views[1]
    firsts = [float(line.d[1:].split(",")[0]) for line in time_view.lines]
    assert firsts == [chart.left, chart.left], "each curve starts at t = 0"
    assert [label for label, _ in chart.legend] == ["a", "b"]
    assert len({style for _, style in chart.legend}) == 2


def test_styles_repeat_colours_with_another_dash_after_ten() -> None:
    styles = charts.styles(12)
    assert len({s.color for s in styles}) == 10
    assert styles[10].color == styles[0].color and styles[10].dash != styles[0].dash


def test_a_chart_without_finite_values_is_empty_and_says_why() -> None:
    chart = charts.line_chart("loss", [series([math.nan, math.inf, -math.inf])])
    assert chart.empty and chart.skipped == 3 and not chart.views
    text = render(chart)
    assert "No finite values to draw." in text and "3 NaN or infinite values not drawn" in text


@pytest.mark.parametrize("value", [0.5, 0.0, -3e-320, 1e308, sys.float_info.max, -1e-300])
def test_a_metric_logged_once_is_a_visible_marker_inside_a_padded_axis(value: float) -> None:
    chart = charts.line_chart("acc", [series([value])])
    for view in chart.views:
        (line,) = view.lines
        assert line.d == "" and len(line.dots) == 1, "one point: a dot of its own, not a line"
        x, y = line.dots[0]
        assert chart.left < x < chart.right, f"{view.x}: the point sits inside the x axis, not on an edge"
        assert chart.top <= y < chart.bottom
        assert len(view.ticks) >= 2
    assert len(chart.y_ticks) >= 2, "the y axis has a scale around the value"
    text = render(chart)
    assert text.count('<path class="dots"') == 2 and f'stroke-width="{charts.DOT_SIZE}"' in text


def test_huge_and_tiny_spans_draw_across_the_whole_plot() -> None:
    for values in ([-1e308, 1e308], [0.0, 4e-323], [-sys.float_info.max, sys.float_info.max]):
        chart = charts.line_chart("m", [series(values)])
        ys = [float(y) for y in re.findall(r"[ML][\d.]+,([\d.]+)", chart.views[0].lines[0].d)]
        assert ys[0] > ys[1] and ys[0] >= chart.bottom - 40 and ys[1] <= chart.top + 40, (values, ys)


def test_time_and_step_axes_take_int64_extremes_without_wrapping() -> None:
    edges = [-(2**63), 2**63 - 1]
    chart = charts.line_chart("m", [series([1.0, 2.0], steps=edges, timestamps=edges)])
    step, time_view = chart.views
    for view in (step, time_view):
        xs = [float(x) for x in re.findall(r"[ML]([\d.]+),", view.lines[0].d)]
        assert xs[0] < xs[1], f"{view.x}: the later point is to the right"
    assert time_view.label == "time since first point (y)"


# --- every input: bounded and correct ------------------------------------------------------------------


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(views.FILTERS)
    return env


ENV = _env()


def render(chart: charts.Chart, *, legend: bool = False) -> str:
    """The chart as the pages write it: the real macro, autoescaped."""
    return str(ENV.get_template("_macros.html").module.chart(chart, legend))  # type: ignore[attr-defined]


@st.composite
def series_strategy(draw: st.DrawFn, label: str = "m") -> charts.Series:
    n = draw(st.integers(0, 40))
    values = draw(st.lists(VALUES, min_size=n, max_size=n))
    steps = draw(st.lists(INT64, min_size=n, max_size=n))
    stamps = draw(st.lists(INT64, min_size=n, max_size=n))
    return charts.Series(
        label,
        np.sort(np.array(steps, dtype=np.int64)),
        np.array(stamps, dtype=np.int64),
        np.array(values, dtype=np.float64),
        charts.styles(1)[0],
    )


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def check_chart(chart: charts.Chart, given_series: list[charts.Series], elapsed: float) -> None:
    assert elapsed < RENDER_SECONDS, f"drawing took {elapsed:.3f} CPU s"
    total = sum(len(s.values) for s in given_series)
    assert chart.points + chart.skipped == total
    assert chart.skipped == sum(int((~np.isfinite(s.values)).sum()) for s in given_series)
    if chart.empty:
        return
    axes = [("y", chart.y_ticks, chart.top, chart.bottom)]
    axes += [(v.x, v.ticks, chart.left, chart.right) for v in chart.views]
    for name, ticks, lo, hi in axes:
        assert 2 <= len(ticks) <= charts.MAX_TICKS, f"{name}: {len(ticks)} ticks"
        labels = [t.label for t in ticks]
        assert len(set(labels)) == len(labels), f"{name}: repeated labels {labels}"
        assert all(0 < len(label) <= 16 for label in labels), f"{name}: {labels}"
        positions = [t.at for t in ticks]
        assert all(lo - 0.1 <= p <= hi + 0.1 for p in positions), f"{name}: ticks off the plot {positions}"
        assert positions == sorted(positions, reverse=name == "y"), f"{name}: ticks out of order"
    for view in chart.views:
        drawn = 0
        for line in view.lines:
            coords = [float(v) for v in NUMBER.findall(line.d)]
            points = list(zip(coords[0::2], coords[1::2], strict=True)) + line.dots
            drawn += len(points)
            for x, y in points:
                assert chart.left - 0.1 <= x <= chart.right + 0.1, f"{view.x}: x={x} off the plot"
                assert chart.top - 0.1 <= y <= chart.bottom + 0.1, f"{view.x}: y={y} off the plot"
        assert drawn == chart.points, f"{view.x}: every finite point is drawn once"


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(series_strategy())
def test_any_single_run_chart_is_bounded_and_correct(one: charts.Series) -> None:
    started = time.thread_time()
    chart = charts.line_chart("m", [one])
    text = render(chart)
    check_chart(chart, [one], time.thread_time() - started)
    if chart.skipped:
        assert "not drawn" in text, "skipped values are said on the chart"
    assert "nan" not in text.lower().replace("nan or infinite", ""), "no NaN leaks into the SVG"
    assert "inf" not in text.replace("infinite", "")


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(series_strategy(), min_size=2, max_size=5))
def test_any_compare_chart_is_bounded_and_correct(many: list[charts.Series]) -> None:
    styled = [
        charts.Series(f"run {i}", s.steps, s.timestamps, s.values, style)
        for i, (s, style) in enumerate(zip(many, charts.styles(len(many)), strict=True))
    ]
    started = time.thread_time()
    chart = charts.line_chart("m", styled)
    text = render(chart, legend=True)
    check_chart(chart, styled, time.thread_time() - started)
    assert text.count("<li>") == len(styled), "every run is in the legend"


@settings(max_examples=300, deadline=None, database=None)
@given(VALUES.filter(math.isfinite), VALUES.filter(math.isfinite), st.integers(1, 8), st.booleans())
def test_any_finite_interval_gets_few_round_covering_ticks(
    lo: float, hi: float, target: int, integer: bool
) -> None:
    started = time.thread_time()
    axis = charts.nice_ticks(lo, hi, target, integer=integer)
    assert time.thread_time() - started < 0.5
    assert 2 <= len(axis.values) <= charts.MAX_TICKS
    assert len(axis.labels) == len(axis.values) and len(set(axis.labels)) == len(axis.labels)
    assert axis.values == sorted(axis.values) and all(math.isfinite(v) for v in axis.values)
    d0, d1 = axis.domain
    assert d0 < d1 and d0 <= min(lo, hi) and d1 >= max(lo, hi), "the axis covers the data"
    assert d0 <= axis.values[0] and axis.values[-1] <= d1
    if integer:
        assert all(v == math.floor(v) for v in axis.values), "steps get whole-number ticks"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.52, "0.52"),
        (-0.0, "0"),
        (math.nan, "NaN"),
        (math.inf, "∞"),
        (-math.inf, "\u2212∞"),
        (1e308, "1.0000e+308"),
        (5e-324, "4.9407e-324"),
        (1_234_567.0, "1,234,567"),
        (None, ""),
    ],
)
def test_metric_values_are_short_for_any_float(value: float | None, text: str) -> None:
    assert views.fmt_value(value) == text


@settings(max_examples=300, deadline=None, database=None)
@given(VALUES, INT64.filter(lambda n: n >= 0))
def test_value_and_size_filters_never_fail(value: float, size: int) -> None:
    assert 0 < len(views.fmt_value(value)) <= 16
    assert views.fmt_size(size).endswith("B")
