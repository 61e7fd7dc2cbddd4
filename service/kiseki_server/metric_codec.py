"""Packing of metric points: all points of one key from one batch become one compact `bytea`.

One row per point costs ~200 bytes (tuple header, keys, index) and a Postgres round of work per point;
a packed chunk costs ~8-10 bytes per point and one row per key per batch.

Layout (little-endian): a fixed header, then the step column, the timestamp column and the values as
raw float64 (NaN and ±inf survive bit for bit). Each integer column is either an arithmetic progression
(stored as base + stride in the header: consecutive steps, or points that share a timestamp, cost
nothing) or base + deltas in the narrowest signed integer type that holds them. Deltas are taken with
int64 wrap-around and summed back the same way, so every int64 round-trips exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

VERSION = 1
_HEADER = struct.Struct("<BIBBqqqq")  # version, n, step code, ts code, step base/stride, ts base/stride
_WIDTHS = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
_PROGRESSION = 0

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Points:
    """Parallel arrays of one metric's points."""

    steps: Int64Array
    timestamps: Int64Array
    values: Float64Array

    def __len__(self) -> int:
        return len(self.values)


def _encode_column(column: Int64Array) -> tuple[int, int, int, bytes]:
    """(code, base, stride, payload) for one int64 column."""
    base = int(column[0])
    if len(column) == 1:
        return _PROGRESSION, base, 0, b""
    with np.errstate(over="ignore"):
        deltas = np.diff(column)
    lo, hi = int(deltas.min()), int(deltas.max())
    if lo == hi:
        return _PROGRESSION, base, lo, b""
    for width, dtype in _WIDTHS.items():
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return width, base, 0, deltas.astype(dtype, copy=False).tobytes()
    raise AssertionError("int64 deltas always fit in int64")


def _decode_column(
    code: int, base: int, stride: int, n: int, buf: bytes, offset: int
) -> tuple[Int64Array, int]:
    if code == _PROGRESSION:
        with np.errstate(over="ignore"):
            column = np.int64(base) + np.arange(n, dtype=np.int64) * np.int64(stride)
        return column, offset
    column = np.empty(n, dtype=np.int64)
    column[0] = base
    deltas = np.frombuffer(buf, dtype=_WIDTHS[code], count=n - 1, offset=offset)
    with np.errstate(over="ignore"):
        np.cumsum(deltas, dtype=np.int64, out=column[1:])
        column[1:] += np.int64(base)
    return column, offset + (n - 1) * code


def encode(points: Points) -> bytes:
    n = len(points)
    if n == 0:
        raise ValueError("a chunk holds at least one point")
    s_code, s_base, s_stride, s_bytes = _encode_column(points.steps)
    t_code, t_base, t_stride, t_bytes = _encode_column(points.timestamps)
    header = _HEADER.pack(VERSION, n, s_code, t_code, s_base, s_stride, t_base, t_stride)
    return b"".join((header, s_bytes, t_bytes, points.values.astype("<f8", copy=False).tobytes()))


def decode(buf: bytes) -> Points:
    version, n, s_code, t_code, s_base, s_stride, t_base, t_stride = _HEADER.unpack_from(buf)
    if version != VERSION:
        raise ValueError(f"unknown metric chunk version {version}")
    steps, offset = _decode_column(s_code, s_base, s_stride, n, buf, _HEADER.size)
    timestamps, offset = _decode_column(t_code, t_base, t_stride, n, buf, offset)
    values = np.frombuffer(buf, dtype="<f8", count=n, offset=offset).astype(np.float64)
    return Points(steps, timestamps, values)


def latest_index(points: Points) -> int:
    """Index of the point that is 'latest' by (step, timestamp, value), the order Postgres uses too."""
    return int(np.lexsort((points.values, points.timestamps, points.steps))[-1])
