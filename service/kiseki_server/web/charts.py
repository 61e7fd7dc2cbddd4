"""Line charts for the run browser, drawn by the service as inline SVG: scales, nice ticks, paths with
gaps where values are NaN or infinite, and legends.

This module only computes geometry (numbers and path strings). `templates/_macros.html` writes the
SVG elements, so every label, title and legend entry passes through Jinja's autoescaping like the rest
of the page. A chart holds two views of the same data, x = step and x = time since the first point;
the page shows one and a stylesheet rule (flipped by a link, or by `kiseki.js` without a reload)
switches to the other. Histories arrive downsampled (first, last, min and max per bucket), so a chart
is a few hundred points and a few kilobytes whatever the run logged.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

import numpy as np
import numpy.typing as npt

XAxis = Literal["step", "time"]
X_AXES: tuple[XAxis, ...] = ("step", "time")

WIDTH = 480
HEIGHT = 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 10, 42
"""Margins around the plot area: room for y tick labels on the left, x ticks and title below."""

PALETTE = (
    "#2563eb",
    "#dc2626",
    "#059669",
    "#9333ea",
    "#ea580c",
    "#0891b2",
    "#db2777",
    "#65a30d",
    "#475569",
    "#ca8a04",
)
"""Line colours, distinguishable from one another and readable on white."""
DASHES = (None, "7 4", "2 3")
"""Beyond ten series, colours repeat with another dash pattern."""

_TIME_UNITS = (
    (120.0, 1.0, "s"),
    (7200.0, 60.0, "min"),
    (172_800.0, 3600.0, "h"),
    (63_115_200.0, 86_400.0, "d"),
    (math.inf, 31_557_600.0, "y"),
)
"""(largest span in seconds, seconds per unit, unit): the unit a time axis counts in (Julian years)."""

MAX_TICKS = 12
"""Most ticks an axis gets, whatever the data: the tick search is bounded by this, not by the data."""
FLAT = 1e-9
"""A span below this fraction of the values' magnitude is drawn as a constant: it is float noise, and
far below a pixel."""
_FLOAT_MAX = sys.float_info.max
_MIN_EXPONENT, _MAX_EXPONENT = -323, 308
"""Tick spacings range from 1e-323 (about the smallest subnormal double, 5e-324) to 1e308."""
DOT_SIZE = 7
"""Diameter of a point without a neighbour, in pixels: a line's 1.8-pixel stroke would barely show it."""

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Style:
    color: str
    dash: str | None = None


def styles(n: int) -> list[Style]:
    """A distinct style for each of `n` series, in a stable order (the legend's)."""
    return [Style(PALETTE[i % len(PALETTE)], DASHES[(i // len(PALETTE)) % len(DASHES)]) for i in range(n)]


@dataclass(frozen=True, slots=True)
class Series:
    """One curve: parallel arrays in step order, as the metric store returns them."""

    label: str
    steps: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    values: FloatArray
    style: Style


@dataclass(frozen=True, slots=True)
class Tick:
    at: float
    """Position in the SVG's coordinates."""
    label: str


@dataclass(frozen=True, slots=True)
class Line:
    d: str
    """SVG path data through runs of two or more drawn points; a NaN or infinite value breaks the line."""
    dots: list[tuple[float, float]]
    """Points with no drawn neighbour (a metric logged once, a value between two NaNs): dots."""
    style: Style
    label: str

    @property
    def dots_d(self) -> str:
        """The dots as one path of zero-length segments: with a round cap as wide as a dot, each is a
        visible disc, and a chart of thousands of them is still a single element."""
        return "".join(f"M{x:g},{y:g}h0" for x, y in self.dots)


@dataclass(frozen=True, slots=True)
class View:
    x: XAxis
    label: str
    ticks: list[Tick]
    lines: list[Line]


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    y_ticks: list[Tick]
    views: list[View]
    legend: list[tuple[str, Style]]
    points: int
    """Points drawn (finite values)."""
    skipped: int
    """NaN and infinite values, drawn as gaps and counted in a note under the chart."""
    dot_size: int = DOT_SIZE

    @property
    def empty(self) -> bool:
        return self.points == 0


# --- scales and ticks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ticks:
    """An axis: round tick values with their labels, and the interval the axis spans (the data and
    the ticks; a tick that would overflow a double is left out and the data's end bounds the axis)."""

    values: list[float]
    labels: list[str]
    step: float
    domain: tuple[float, float]


def _span_log10(lo: float, hi: float) -> float:
    """log10(hi - lo) for lo < hi, also when the difference overflows (-1e308 to 1e308)."""
    span = hi - lo
    if math.isfinite(span):
        return math.log10(span)
    return math.log10(hi / 2 - lo / 2) + math.log10(2.0)


def _tick_value(n: int, exponent: int) -> float:
    """n * 10^exponent, correctly rounded (inf past the double range, never an exception)."""
    return float(f"{n}e{exponent}")


def nice_ticks(lo: float, hi: float, target: int = 5, *, integer: bool = False) -> Ticks:
    """Round ticks (1, 2 or 5 times a power of ten apart, about `target` intervals, never more than
    MAX_TICKS) covering the finite interval [lo, hi]. A constant (or flat to float precision) interval
    becomes its value ± 10%, or ± 1 around 0. `integer`: spacings of whole numbers (steps).

    Ticks are counted from integers n * 10^e and labelled from those integers exactly, so the work and
    the result are bounded whatever the magnitudes, from subnormals to ±1.8e308."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks need finite bounds, got {lo!r} and {hi!r}")
    lo, hi = min(lo, hi), max(lo, hi)
    magnitude = max(abs(lo), abs(hi))
    if hi == lo or hi - lo <= magnitude * FLAT:
        centre = lo / 2 + hi / 2
        pad = max(abs(centre) * 0.1 if centre else 1.0, 1.0 if integer else 1e-322)
        lo, hi = max(centre - pad, -_FLOAT_MAX), min(centre + pad, _FLOAT_MAX)
    raw = _span_log10(lo, hi) - math.log10(max(target, 2))
    exponent = math.floor(raw)
    fraction = 10.0 ** (raw - exponent)
    mantissa = next((m for m in (1, 2, 5) if fraction <= m * 1.0000001), 10)
    if mantissa == 10:
        mantissa, exponent = 1, exponent + 1
    if integer and exponent < 0:
        mantissa, exponent = 1, 0
    if exponent < _MIN_EXPONENT:
        mantissa, exponent = 1, _MIN_EXPONENT
    if exponent >= _MAX_EXPONENT:  # 2e308 and up overflow; 1e308 still gives two ticks
        mantissa, exponent = 1, _MAX_EXPONENT
    for _ in range(8):  # each round widens the spacing about 2.5 times: a few rounds at most
        first, last = _cover(lo, hi, mantissa, exponent)
        if last - first < MAX_TICKS or exponent >= _MAX_EXPONENT:
            break
        mantissa, exponent = {1: (2, exponent), 2: (5, exponent), 5: (1, exponent + 1)}[mantissa]
    else:  # pragma: no cover - the spacing is chosen from the span, so the first round fits
        raise AssertionError(f"no tick spacing for [{lo!r}, {hi!r}]")
    ns = [i * mantissa for i in range(first, last + 1)]
    kept = [(n, v) for n in ns if math.isfinite(v := _tick_value(n, exponent))]
    values = [v + 0.0 for _, v in kept]
    domain = (min(lo, values[0]), max(hi, values[-1]))
    step = _tick_value(mantissa, exponent)
    return Ticks(values, _labels([n for n, _ in kept], exponent), step, domain)


def _cover(lo: float, hi: float, mantissa: int, exponent: int) -> tuple[int, int]:
    """Indices of the first tick ≤ lo and the last ≥ hi at spacing mantissa * 10^exponent. Division
    gives them to within one; a correction of at most a few steps checks them against exact ticks."""
    step = _tick_value(mantissa, exponent)
    first, last = math.floor(lo / step), math.ceil(hi / step)

    def tick(i: int) -> float:
        return _tick_value(i * mantissa, exponent)

    for _ in range(3):
        if tick(first) > lo:
            first -= 1
        elif tick(first + 1) <= lo:
            first += 1
        if tick(last) < hi:
            last += 1
        elif tick(last - 1) >= hi:
            last -= 1
    return first, last


_SUFFIXES = {3: "k", 6: "M", 9: "G", 12: "T"}


def _labels(ns: Sequence[int], exponent: int) -> list[str]:
    """Labels for the ticks n * 10^exponent, all in one format: plain decimals between 0.001 and 9999,
    a k/M/G/T suffix up to 1e15, otherwise a short exponent ('2.5e-7', '1e308'). Exact, since they
    are written from the integers (decimal arithmetic), and as many decimals as the spacing needs."""
    values = [Decimal(n).scaleb(exponent) for n in ns]
    if not any(values):
        return ["0" for _ in values]
    big = max(v.adjusted() for v in values if v)
    if -3 <= big < 4:
        return [f"{v:.{max(0, -exponent)}f}" if v else "0" for v in values]
    if 4 <= big < 15:
        size = 3 * (big // 3)
        return [
            f"{v.scaleb(-size):.{max(0, size - exponent)}f}{_SUFFIXES[size]}" if v else "0" for v in values
        ]
    return [_exponential(v, max(0, big - exponent)) if v else "0" for v in values]


def _exponential(value: Decimal, digits: int) -> str:
    mantissa, power = f"{value:.{digits}e}".split("e")
    return f"{mantissa}e{int(power)}"


class Scale:
    """A linear map from a data interval to a pixel interval (either may be reversed). Any finite
    interval works, -1.8e308 to 1.8e308 and subnormal ones alike: data is first multiplied by a power
    of two (exact) that brings the interval's ends near 1, so neither width nor factor overflows."""

    def __init__(self, domain: tuple[float, float], pixels: tuple[float, float]) -> None:
        d0, d1 = domain
        self.p0, self.p1 = pixels
        _, power = math.frexp(max(abs(d0), abs(d1)))
        self._powers = (math.ldexp(1.0, -power // 2), math.ldexp(1.0, -power - (-power // 2)))
        self.d0, self.d1 = self._normal(d0), self._normal(d1)
        width = self.d1 - self.d0
        self._factor = (self.p1 - self.p0) / width if width else 0.0

    def _normal(self, value: float) -> float:
        return value * self._powers[0] * self._powers[1]

    def __call__(self, values: FloatArray) -> FloatArray:
        """Pixel positions of finite values (others come out non-finite)."""
        if not self._factor:
            return np.full(values.shape, (self.p0 + self.p1) / 2)
        normal = values * self._powers[0] * self._powers[1]
        result: FloatArray = self.p0 + (normal - self.d0) * self._factor
        return result

    def at(self, value: float) -> float:
        return float(self(np.array([value], dtype=np.float64))[0])


# --- paths -------------------------------------------------------------------------------------------


def path_d(
    xs: FloatArray, ys: FloatArray, drawn: npt.NDArray[np.bool_]
) -> tuple[str, list[tuple[float, float]]]:
    """Path data through the points where `drawn` holds, lifting the pen over the others, and the
    points that have no drawn neighbour (drawn as dots, not as zero-length segments). One pass over
    the points, however the gaps fall."""
    index = np.flatnonzero(drawn)
    if not len(index):
        return "", []
    xr, yr = np.round(xs[index], 1).tolist(), np.round(ys[index], 1).tolist()
    starts = np.ones(len(index), dtype=np.bool_)
    starts[1:] = np.diff(index) > 1
    alone = starts.copy()
    alone[:-1] &= starts[1:]
    parts: list[str] = []
    dots: list[tuple[float, float]] = []
    after_start = False
    for x, y, start, single in zip(xr, yr, starts.tolist(), alone.tolist(), strict=True):
        if single:
            dots.append((x, y))
        elif start:
            parts.append(f"M{x:g},{y:g}")
            after_start = True
        else:
            parts.append(f"{'L' if after_start else ' '}{x:g},{y:g}")
            after_start = False
    return "".join(parts), dots


def _time_unit(span_seconds: float) -> tuple[float, str]:
    for limit, seconds, unit in _TIME_UNITS:
        if span_seconds <= limit:
            return seconds, unit
    return _TIME_UNITS[-1][1], _TIME_UNITS[-1][2]  # pragma: no cover - the last limit is infinite


def _x_values(series: Series, x: XAxis) -> FloatArray:
    if x == "step":
        return series.steps.astype(np.float64)
    stamps = series.timestamps.astype(np.int64, copy=False)
    if not len(stamps):
        return np.empty(0, np.float64)
    # Seconds since the series' first point: runs started at different times overlay from the origin.
    # The difference is taken on unsigned views, exact for any two int64s (-2**63 to 2**63 - 1 would
    # overflow a signed subtraction).
    offsets = stamps.view(np.uint64) - stamps.min().view(np.uint64)
    relative: FloatArray = offsets.astype(np.float64) / 1000.0
    return relative


def _view(
    x: XAxis,
    series: Sequence[Series],
    drawn: list[npt.NDArray[np.bool_]],
    y_scale: Callable[[FloatArray], FloatArray],
    box: tuple[float, float, float, float],
) -> View:
    left, _, right, _ = box
    xs = [_x_values(s, x) for s in series]
    used = [v[m] for v, m in zip(xs, drawn, strict=True) if m.any()]
    lo = min(float(v.min()) for v in used)
    hi = max(float(v.max()) for v in used)
    if x == "step":
        axis = nice_ticks(lo, hi, target=6, integer=True)
        label, divisor = "step", 1.0
    else:
        divisor, unit = _time_unit(hi - lo)
        axis = nice_ticks(lo / divisor, hi / divisor, target=6)
        label = f"time since first point ({unit})"
    scale = Scale(axis.domain, (left, right))
    ticks = [Tick(round(scale.at(v), 1), t) for v, t in zip(axis.values, axis.labels, strict=True)]
    lines = [
        Line(*path_d(scale(v / divisor), y_scale(s.values), m), s.style, s.label)
        for s, v, m in zip(series, xs, drawn, strict=True)
        if m.any()
    ]
    return View(x, label, ticks, lines)


def line_chart(title: str, series: Sequence[Series], *, width: int = WIDTH, height: int = HEIGHT) -> Chart:
    """A chart of one or more series sharing a y axis (e.g. one metric of several runs). Any float64
    values and int64 steps and timestamps: NaN and ±inf are gaps, counted in `skipped`; the work is
    bounded by the number of points (ticks are at most MAX_TICKS per axis)."""
    left, top, right, bottom = _LEFT, _TOP, width - _RIGHT, height - _BOTTOM
    drawn = [np.isfinite(s.values) for s in series]
    points = sum(int(m.sum()) for m in drawn)
    skipped = sum(len(s.values) for s in series) - points
    legend = [(s.label, s.style) for s in series]
    if not points:
        return Chart(title, width, height, left, top, right, bottom, [], [], legend, 0, skipped)
    finite = np.concatenate([s.values[m] for s, m in zip(series, drawn, strict=True)])
    axis = nice_ticks(float(finite.min()), float(finite.max()), target=5)
    y_scale = Scale(axis.domain, (bottom, top))
    y_ticks = [Tick(round(y_scale.at(v), 1), t) for v, t in zip(axis.values, axis.labels, strict=True)]
    # Non-finite values are not drawn; zero them so that scaling them raises no floating-point warning.
    finite_only = [
        Series(s.label, s.steps, s.timestamps, np.where(m, s.values, 0.0), s.style)
        for s, m in zip(series, drawn, strict=True)
    ]
    box = (left, top, right, bottom)
    views = [_view(x, finite_only, drawn, y_scale, box) for x in X_AXES]
    return Chart(title, width, height, left, top, right, bottom, y_ticks, views, legend, points, skipped)
