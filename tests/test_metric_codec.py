"""The packed chunk format: exact round trips and compact sizes."""

from __future__ import annotations

import numpy as np
import pytest

from kiseki_server import metric_codec
from kiseki_server.metric_codec import Points
from kiseki_server.stores.metrics import downsample

I64 = np.iinfo(np.int64)


def points(steps, stamps, values) -> Points:
    return Points(np.asarray(steps, np.int64), np.asarray(stamps, np.int64), np.asarray(values, np.float64))


def assert_round_trip(p: Points) -> bytes:
    data = metric_codec.encode(p)
    back = metric_codec.decode(data)
    np.testing.assert_array_equal(back.steps, p.steps)
    np.testing.assert_array_equal(back.timestamps, p.timestamps)
    assert back.values.tobytes() == p.values.tobytes(), "values must survive bit for bit (NaN payloads too)"
    return data


rng = np.random.default_rng(7)


@pytest.mark.parametrize(
    "p",
    [
        points([5], [9], [1.0]),
        points(range(1000), [1_700_000_000_000] * 1000, rng.random(1000)),
        points(range(0, 3000, 3), range(10, 1010), rng.random(1000)),
        points(rng.integers(-100, 100, 500), rng.integers(0, 10**6, 500), rng.normal(size=500)),
        points(
            [I64.min, I64.max, 0, I64.min, -1],
            [0, I64.max, 1, I64.max, 0],
            [np.nan, np.inf, -np.inf, -0.0, 5e-324],
        ),
        points(
            rng.integers(I64.min, I64.max, 200, endpoint=True), rng.integers(0, I64.max, 200), rng.random(200)
        ),
    ],
    ids=["single", "consecutive-steps-same-time", "strided", "random-small", "extremes", "random-int64"],
)
def test_round_trip(p):
    assert_round_trip(p)


def test_typical_training_log_costs_about_eight_bytes_a_point():
    n = 1000
    stamps = 1_700_000_000_000 + np.cumsum(rng.integers(0, 50, n))
    data = assert_round_trip(points(range(n), stamps, rng.random(n)))
    assert len(data) <= 9.5 * n, f"{len(data) / n:.2f} bytes/point: steps are free, timestamps one byte"


def test_latest_index_orders_by_step_then_timestamp_then_value():
    p = points([3, 9, 9, 9, 1], [5, 1, 2, 2, 9], [0.0, 5.0, 1.0, 2.0, 7.0])
    assert metric_codec.latest_index(p) == 3


def test_empty_chunk_is_refused():
    with pytest.raises(ValueError, match="at least one point"):
        metric_codec.encode(points([], [], []))


def test_downsample_bounds_and_keeps_extremes():
    n = 10_001
    values = np.sin(np.arange(n) / 300.0)
    values[4321] = -50.0
    p = points(range(n), range(n), values)
    d = downsample(p, 100)
    assert len(d) <= 100
    assert d.steps[0] == 0 and d.steps[-1] == n - 1
    assert np.all(np.diff(d.steps) > 0)
    assert -50.0 in d.values
    assert values.max() == d.values.max()
    assert downsample(p, n + 5) is p, "short series are returned as they are"
