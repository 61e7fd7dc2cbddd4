"""Epoch milliseconds as text: the one function every page of the run browser, the CLI and the SDK use
to show a time.

The API accepts any int64 time (lossless, as MLflow does), so a client that sends microseconds as
milliseconds stores a time far past year 9999, where Python's `datetime` ends. Showing it must never
fail: such a time is written as the raw number with a note, and the page, table or frame around it
still renders.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["MAX_MS", "MIN_MS", "format_time", "utc_datetime"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_MS = -62_135_596_800_000
"""0001-01-01 00:00:00.000 UTC, the earliest time a `datetime` holds."""
MAX_MS = 253_402_300_799_999
"""9999-12-31 23:59:59.999 UTC, the latest."""


def utc_datetime(ms: int) -> datetime | None:
    """`ms` as an aware UTC datetime, exact to the millisecond; None outside years 1 to 9999."""
    if not MIN_MS <= ms <= MAX_MS:
        return None
    return _EPOCH + timedelta(milliseconds=ms)


def format_time(ms: int | None, *, iso: bool = False, zone: bool = False, missing: str = "") -> str:
    """A time for people, in UTC: '2023-11-14 22:13:20' (with ' UTC' when `zone`), or ISO 8601 with
    milliseconds ('2023-11-14T22:13:20.000Z') when `iso`. `missing` stands for None. Never raises: a time
    outside years 1 to 9999 reads '4611686018427387904 ms (out of range)'."""
    if ms is None:
        return missing
    when = utc_datetime(ms)
    if when is None:
        return f"{ms} ms (out of range)"
    naive = when.replace(tzinfo=None)
    # isoformat, not strftime: %Y does not pad years before 1000 to four digits on every platform.
    if iso:
        return naive.isoformat(timespec="milliseconds") + "Z"
    text = naive.isoformat(sep=" ", timespec="seconds")
    return f"{text} UTC" if zone else text
