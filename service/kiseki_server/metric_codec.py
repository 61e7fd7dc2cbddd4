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
from typing import Any

import numpy as np
import numpy.typing as npt

VERSION = 1
_HEADER = struct.Struct("<BIBBqqqq")  # version, n, step code, ts code, step base/stride, ts base/stride
_WIDTHS: dict[int, type[np.signedinteger[Any]]] = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}
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


def encode_many(points: Points, bounds: Int64Array) -> list[bytes]:
    """`encode` of each segment `points[bounds[i]:bounds[i + 1]]` (none empty), byte for byte, with a
    fixed number of numpy calls whatever the number of segments: a batch of 50,000 keys must not cost
    50,000 rounds of numpy's per-call overhead."""
    starts, ends = bounds[:-1], bounds[1:]
    if len(starts) == 0:
        return []
    if np.any(ends <= starts):
        raise ValueError("a chunk holds at least one point")
    s_codes, s_bases, s_strides, s_payloads = _encode_columns(points.steps, starts, ends)
    t_codes, t_bases, t_strides, t_payloads = _encode_columns(points.timestamps, starts, ends)
    values = points.values.astype("<f8", copy=False).tobytes()
    pack = _HEADER.pack
    return [
        b"".join(
            (
                pack(VERSION, e - s, sc, tc, sb, ss, tb, ts),
                s_payloads[sc][s * sc : (e - 1) * sc] if sc else b"",
                t_payloads[tc][s * tc : (e - 1) * tc] if tc else b"",
                values[s * 8 : e * 8],
            )
        )
        for s, e, sc, sb, ss, tc, tb, ts in zip(
            starts.tolist(),
            ends.tolist(),
            s_codes,
            s_bases,
            s_strides,
            t_codes,
            t_bases,
            t_strides,
            strict=True,
        )
    ]


def _encode_columns(
    column: Int64Array, starts: Int64Array, ends: Int64Array
) -> tuple[list[int], list[int], list[int], dict[int, bytes]]:
    """`_encode_column` of every segment at once: per-segment codes, bases and strides, and for each
    delta width used the whole column's deltas in that width (a segment's payload is a slice of it)."""
    with np.errstate(over="ignore"):
        deltas = np.diff(column)
    # Segment i's deltas are deltas[starts[i]:ends[i] - 1]; the one at ends[i] - 1 crosses into the next
    # segment. Reducing over alternate boundaries (with a pad so every index is in range) gives each
    # segment's min and max; segments of one point have no deltas and are masked out.
    padded = np.append(deltas, np.int64(0))
    cuts = np.empty(2 * len(starts), dtype=np.int64)
    cuts[0::2], cuts[1::2] = starts, ends - 1
    lo = np.minimum.reduceat(padded, cuts)[0::2]
    hi = np.maximum.reduceat(padded, cuts)[0::2]
    multi = ends - starts > 1
    codes = np.zeros(len(starts), dtype=np.int64)
    varying = multi & (lo != hi)
    for width in (8, 4, 2, 1):  # narrowest last, so it wins
        info = np.iinfo(_WIDTHS[width])
        codes[varying & (lo >= info.min) & (hi <= info.max)] = width
    strides = np.where(multi & (lo == hi), lo, 0)
    payloads = {
        width: deltas.astype(_WIDTHS[width], copy=False).tobytes()
        for width in np.unique(codes).tolist()
        if width
    }
    return codes.tolist(), column[starts].tolist(), strides.tolist(), payloads


def latest_index(points: Points) -> int:
    """Index of the point that is 'latest' by (step, timestamp, value), the order Postgres uses too."""
    return int(np.lexsort((points.values, points.timestamps, points.steps))[-1])


def latest_indices(points: Points, bounds: Int64Array) -> Int64Array:
    """`latest_index` of every segment `points[bounds[i]:bounds[i + 1]]` (as indices into `points`), in
    one sort: lexsort is stable, so ties resolve exactly as they do segment by segment."""
    segment = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    order = np.lexsort((points.values, points.timestamps, points.steps, segment))
    return order[bounds[1:] - 1]
