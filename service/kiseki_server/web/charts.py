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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

_TIME_UNITS = ((120.0, 1.0, "s"), (7200.0, 60.0, "min"), (172800.0, 3600.0, "h"), (math.inf, 86400.0, "d"))
"""(largest span in seconds, seconds per unit, unit): the unit a time axis counts in."""

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
    """SVG path data; a NaN or infinite value breaks the line, an isolated point is a dot."""
    style: Style
    label: str


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
    """NaN and infinite values, drawn as gaps."""

    @property
    def empty(self) -> bool:
        return self.points == 0


# --- scales and ticks --------------------------------------------------------------------------------


def nice_step(span: float, target: int = 5) -> float:
    """A round tick spacing (1, 2 or 5 times a power of ten) giving about `target` intervals."""
    raw = span / max(target, 1)
    if not raw > 0 or not math.isfinite(raw):
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 5.0):
        if raw <= factor * magnitude * 1.0000001:
            return factor * magnitude
    return 10.0 * magnitude


def nice_ticks(lo: float, hi: float, target: int = 5, *, min_step: float = 0.0) -> tuple[list[float], float]:
    """Round tick values covering [lo, hi] (the first ≤ lo, the last ≥ hi) and their spacing."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = max(abs(lo) * 0.1, min_step, 1e-12) if lo else 1.0
        lo, hi = lo - pad, hi + pad
    step = max(nice_step(hi - lo, target), min_step)
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    decimals = max(0, -math.floor(math.log10(step)) + 1)
    ticks = [round(i * step, decimals) + 0.0 for i in range(first, last + 1)]
    return ticks, step


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def tick_labels(values: Sequence[float], step: float) -> list[str]:
    """Labels for one axis, all in one format: as many decimals as the spacing needs, a k/M/G/T
    suffix for large values, exponents when every value is tiny."""
    big = max((abs(v) for v in values), default=0.0)
    if big >= 1e4:
        size, suffix = next((s, x) for s, x in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")) if big >= s)
        digits = _decimals(step / size)
        return [f"{v / size:.{digits}f}{suffix}" if v else "0" for v in values]
    if 0 < big < 1e-3:
        digits = max(1, _decimals(step) - _decimals(big))
        return [f"{v:.{digits}e}" if v else "0" for v in values]
    digits = _decimals(step)
    return [f"{v:.{digits}f}" if v else "0" for v in values]


class Scale:
    """A linear map from a data interval to a pixel interval (either may be reversed)."""

    def __init__(self, domain: tuple[float, float], pixels: tuple[float, float]) -> None:
        self.d0, self.d1 = domain
        self.p0, self.p1 = pixels
        width = self.d1 - self.d0
        self._factor = (self.p1 - self.p0) / width if width else 0.0

    def __call__(self, values: FloatArray) -> FloatArray:
        if not self._factor:
            return np.full(values.shape, (self.p0 + self.p1) / 2)
        result: FloatArray = self.p0 + (values - self.d0) * self._factor
        return result

    def at(self, value: float) -> float:
        return float(self(np.array([value], dtype=np.float64))[0])


# --- paths -------------------------------------------------------------------------------------------


def path_d(xs: FloatArray, ys: FloatArray, drawn: npt.NDArray[np.bool_]) -> str:
    """Path data through the points where `drawn` holds, lifting the pen over the others. A run of one
    point becomes a zero-length segment, which a round line cap shows as a dot."""
    parts: list[str] = []
    index = np.flatnonzero(drawn)
    if not len(index):
        return ""
    breaks = np.flatnonzero(np.diff(index) > 1) + 1
    xr, yr = np.round(xs, 1), np.round(ys, 1)
    for run in np.split(index, breaks):
        coords = [f"{x:g},{y:g}" for x, y in zip(xr[run].tolist(), yr[run].tolist(), strict=True)]
        if len(coords) == 1:
            parts.append(f"M{coords[0]}h0")
        else:
            parts.append(f"M{coords[0]}L{' '.join(coords[1:])}")
    return "".join(parts)


def _time_unit(span_seconds: float) -> tuple[float, str]:
    for limit, seconds, unit in _TIME_UNITS:
        if span_seconds <= limit:
            return seconds, unit
    return 86400.0, "d"  # pragma: no cover - the last limit is infinite


def _x_values(series: Series, x: XAxis) -> FloatArray:
    if x == "step":
        return series.steps.astype(np.float64)
    stamps = series.timestamps
    if not len(stamps):
        return np.empty(0, np.float64)
    # Seconds since the series' first point: runs started at different times overlay from the origin.
    relative: FloatArray = (stamps - stamps.min()).astype(np.float64) / 1000.0
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
        values, step = nice_ticks(lo, hi, target=6, min_step=1.0)
        label, divisor = "step", 1.0
    else:
        divisor, unit = _time_unit(hi - lo)
        values, step = nice_ticks(lo / divisor, hi / divisor, target=6)
        label = f"time since first point ({unit})"
    scale = Scale((values[0], values[-1]), (left, right))
    ticks = [Tick(round(scale.at(v), 1), t) for v, t in zip(values, tick_labels(values, step), strict=True)]
    lines = [
        Line(path_d(scale(v / divisor), y_scale(s.values), m), s.style, s.label)
        for s, v, m in zip(series, xs, drawn, strict=True)
        if m.any()
    ]
    return View(x, label, ticks, lines)


def line_chart(title: str, series: Sequence[Series], *, width: int = WIDTH, height: int = HEIGHT) -> Chart:
    """A chart of one or more series sharing a y axis (e.g. one metric of several runs)."""
    left, top, right, bottom = _LEFT, _TOP, width - _RIGHT, height - _BOTTOM
    drawn = [np.isfinite(s.values) for s in series]
    points = sum(int(m.sum()) for m in drawn)
    skipped = sum(len(s.values) for s in series) - points
    legend = [(s.label, s.style) for s in series]
    if not points:
        return Chart(title, width, height, left, top, right, bottom, [], [], legend, 0, skipped)
    finite = np.concatenate([s.values[m] for s, m in zip(series, drawn, strict=True)])
    values, step = nice_ticks(float(finite.min()), float(finite.max()), target=5)
    y_scale = Scale((values[0], values[-1]), (bottom, top))
    labels = tick_labels(values, step)
    y_ticks = [Tick(round(y_scale.at(v), 1), t) for v, t in zip(values, labels, strict=True)]
    box = (left, top, right, bottom)
    views = [_view(x, series, drawn, y_scale, box) for x in X_AXES]
    return Chart(title, width, height, left, top, right, bottom, y_ticks, views, legend, points, skipped)
