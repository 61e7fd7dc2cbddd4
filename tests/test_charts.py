"""The run browser's SVG chart geometry: round ticks, labels, gaps for NaN, dots, both x axes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from kiseki_server.web import charts


@pytest.mark.parametrize(
    ("lo", "hi", "ticks"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.213, 0.987, [0.2, 0.4, 0.6, 0.8, 1.0]),
        (3.0, 3.0, [2.6, 2.8, 3.0, 3.2, 3.4]),
        (0.0, 0.0, [-1.0, -0.5, 0.0, 0.5, 1.0]),
        (12_000.0, 1_500_000.0, [0.0, 500_000.0, 1_000_000.0, 1_500_000.0]),
        (-2.5, 7.1, [-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]),
    ],
)
def test_nice_ticks_are_round_and_cover_the_data(lo: float, hi: float, ticks: list[float]) -> None:
    found, step = charts.nice_ticks(lo, hi)
    assert found == ticks
    assert found[0] <= lo and found[-1] >= hi
    assert all(math.isclose(b - a, step) for a, b in itertools.pairwise(found))


@pytest.mark.parametrize(
    ("values", "step", "labels"),
    [
        ([0.0, 0.2, 0.4], 0.2, ["0", "0.2", "0.4"]),
        ([0.5, 0.50001, 0.50002], 0.00001, ["0.50000", "0.50001", "0.50002"]),
        ([0.0, 500_000.0, 1_000_000.0], 500_000.0, ["0", "0.5M", "1.0M"]),
        ([0.0, 20_000.0, 40_000.0], 20_000.0, ["0", "20k", "40k"]),
        ([1e-6, 2e-6, 3e-6], 1e-6, ["1.0e-06", "2.0e-06", "3.0e-06"]),
        ([-4.0, 0.0, 4.0], 2.0, ["-4", "0", "4"]),
    ],
)
def test_tick_labels_share_one_format_per_axis(values: list[float], step: float, labels: list[str]) -> None:
    assert charts.tick_labels(values, step) == labels


def test_path_breaks_at_gaps_and_draws_lone_points_as_dots() -> None:
    xs = np.arange(6, dtype=np.float64)
    ys = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    drawn = np.array([True, True, False, True, False, True])
    assert charts.path_d(xs, ys, drawn) == "M0,1L1,2M3,4h0M5,6h0"
    assert charts.path_d(xs, ys, np.zeros(6, dtype=bool)) == ""


def series(values: list[float], *, label: str = "loss", start: int = 1_700_000_000_000) -> charts.Series:
    n = len(values)
    return charts.Series(
        label,
        np.arange(n, dtype=np.int64) * 10,
        start + np.arange(n, dtype=np.int64) * 90_000,
        np.array(values, dtype=np.float64),
        charts.styles(1)[0],
    )


def test_chart_has_a_step_and_a_time_view_with_the_same_y_axis() -> None:
    chart = charts.line_chart("loss", [series([1.0, 0.5, math.nan, 0.25, math.inf])])
    assert (chart.points, chart.skipped) == (3, 2)
    assert [t.label for t in chart.y_ticks] == ["0.2", "0.4", "0.6", "0.8", "1.0"]
    step, time = chart.views
    assert (step.x, time.x) == ("step", "time")
    assert [t.label for t in step.ticks] == ["0", "5", "10", "15", "20", "25", "30"], (
        "x covers the drawn points"
    )
    assert time.label == "time since first point (min)"
    assert [t.label for t in time.ticks] == ["0", "1", "2", "3", "4", "5"]
    assert step.lines[0].d.count("M") == 2, "NaN and infinity leave gaps"
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
    time = chart.views[1]
    firsts = [float(line.d[1:].split(",")[0]) for line in time.lines]
    assert firsts == [chart.left, chart.left], "each curve starts at t = 0"
    assert [label for label, _ in chart.legend] == ["a", "b"]
    assert len({style for _, style in chart.legend}) == 2


def test_styles_repeat_colours_with_another_dash_after_ten() -> None:
    styles = charts.styles(12)
    assert len({s.color for s in styles}) == 10
    assert styles[10].color == styles[0].color and styles[10].dash != styles[0].dash


def test_a_chart_without_finite_values_is_empty() -> None:
    chart = charts.line_chart("loss", [series([math.nan, math.nan])])
    assert chart.empty and chart.skipped == 2 and not chart.views
