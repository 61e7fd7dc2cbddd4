"""Showing a time: one function for the run browser, the CLI and the SDK, that never fails on an int64
of milliseconds (the API accepts any), and DataFrames whose out-of-range times are NaT."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kiseki
from kiseki import cli
from kiseki.client import Client
from kiseki.frames import FRAME_MAX_MS, FRAME_MIN_MS, runs_to_frame
from kiseki.models import Run
from kiseki.timefmt import MAX_MS, MIN_MS, format_time, utc_datetime
from kiseki_server.web import views

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FAR = 2**62


@pytest.mark.parametrize(
    ("ms", "text", "iso"),
    [
        (1_700_000_000_123, "2023-11-14 22:13:20", "2023-11-14T22:13:20.123Z"),
        (0, "1970-01-01 00:00:00", "1970-01-01T00:00:00.000Z"),
        (-1, "1969-12-31 23:59:59", "1969-12-31T23:59:59.999Z"),
        (MIN_MS, "0001-01-01 00:00:00", "0001-01-01T00:00:00.000Z"),
        (MAX_MS, "9999-12-31 23:59:59", "9999-12-31T23:59:59.999Z"),
        (MAX_MS + 1, "253402300800000 ms (out of range)", "253402300800000 ms (out of range)"),
        (MIN_MS - 1, "-62135596800001 ms (out of range)", "-62135596800001 ms (out of range)"),
        (FAR, f"{FAR} ms (out of range)", f"{FAR} ms (out of range)"),
        (INT64_MAX, f"{INT64_MAX} ms (out of range)", f"{INT64_MAX} ms (out of range)"),
        (INT64_MIN, f"{INT64_MIN} ms (out of range)", f"{INT64_MIN} ms (out of range)"),
    ],
)
def test_times_are_utc_and_out_of_range_ones_are_raw_numbers(ms: int, text: str, iso: str) -> None:
    assert format_time(ms) == text
    assert format_time(ms, iso=True) == iso
    zoned = format_time(ms, zone=True)
    assert zoned == (f"{text} UTC" if utc_datetime(ms) else text), "only a real date gets a zone"


def test_none_is_the_missing_text() -> None:
    assert format_time(None) == "" and format_time(None, missing="-") == "-"


@settings(max_examples=500, deadline=None, database=None)
@given(st.integers(INT64_MIN, INT64_MAX))
def test_any_int64_is_shown_and_dates_are_exact_to_the_millisecond(ms: int) -> None:
    for text in (format_time(ms), format_time(ms, iso=True), format_time(ms, zone=True)):
        assert text
    when = utc_datetime(ms)
    if MIN_MS <= ms <= MAX_MS:
        assert (
            when is not None and (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1) == ms
        )
    else:
        assert when is None and format_time(ms) == f"{ms} ms (out of range)"


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(INT64_MIN, INT64_MAX), st.one_of(st.none(), st.integers(INT64_MIN, INT64_MAX)))
def test_the_run_browser_filters_never_fail(start: int, end: int | None) -> None:
    """Every time filter the pages use, on any pair of int64 times."""
    for status in ("RUNNING", "FINISHED"):
        assert isinstance(views.fmt_duration(start, end, status), str)
    assert views.fmt_time(start) and isinstance(views.fmt_iso(start), str) and views.fmt_ago(start)
    assert views.fmt_iso(start) == ("" if utc_datetime(start) is None else format_time(start, iso=True))


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (-5, "\u2013"),
        (850, "850 ms"),
        (42_100, "42.1 s"),
        (3 * 86_400_000 + 4 * 3_600_000, "3 d 4 h"),
        (2**63 - 1, "292,471,208 y"),
        (float("nan"), "\u2013"),
        (float("inf"), "\u2013"),
    ],
)
def test_spans_of_any_length(ms: float, text: str) -> None:
    assert views.fmt_span(ms) == text


def test_far_future_activity_is_not_just_now() -> None:
    assert views.fmt_ago(FAR) == "in the future"
    assert views.fmt_ago(INT64_MIN).endswith(" d ago")


# --- the CLI and DataFrames against a real server --------------------------------------------------------


@pytest.fixture
def far_runs(tracking_uri: str) -> tuple[str, dict[str, int]]:
    """An experiment with a run started now, one far past year 9999 and one ending at int64's end."""
    name = f"times-{uuid.uuid4().hex[:8]}"
    starts = {"now": 1_700_000_000_000, "far": FAR, "edge": FRAME_MAX_MS}
    with Client(tracking_uri) as client:
        experiment_id = client.create_experiment(name)
        for run_name, start in starts.items():
            run = client.create_run(experiment_id, start_time=start, run_name=run_name)
            end = {"now": start + 1000, "far": INT64_MAX, "edge": start}[run_name]
            client.set_terminated(run.info.run_id, end_time=end)
    return experiment_id, starts


def test_cli_lists_runs_with_times_past_year_9999(
    tracking_uri: str, far_runs: tuple[str, dict[str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    experiment_id, _ = far_runs
    assert cli.main(["runs", "list", experiment_id, "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert f"{FAR} ms (out of range)" in out and "2023-11-14 22:13:20" in out, out
    assert "2262-04-11 23:47:16" in out


def test_dataframe_has_nat_where_pandas_cannot_hold_the_time(
    tracking_uri: str, far_runs: tuple[str, dict[str, int]]
) -> None:
    pd = pytest.importorskip("pandas")
    experiment_id, _ = far_runs
    kiseki.set_tracking_uri(tracking_uri)
    frame = kiseki.search_runs([experiment_id], order_by=["run_name"])
    assert list(frame["run_name"]) == ["edge", "far", "now"]
    assert str(frame["start_time"].dtype).startswith("datetime64") and "UTC" in str(frame["start_time"].dtype)
    edge, far, now = frame.itertuples(index=False)
    assert now.start_time == pd.Timestamp(1_700_000_000_000, unit="ms", tz="UTC")
    assert edge.start_time == pd.Timestamp(FRAME_MAX_MS, unit="ms", tz="UTC"), "the last time pandas holds"
    assert pd.isna(far.start_time) and pd.isna(far.end_time), "past what a Timestamp holds: NaT"
    durations = (frame["end_time"] - frame["start_time"]).tolist()
    assert durations[0] == pd.Timedelta(0) and durations[2] == pd.Timedelta(seconds=1), durations


@pytest.mark.parametrize("ms", [FRAME_MIN_MS - 1, FRAME_MAX_MS + 1, INT64_MIN, INT64_MAX, -(2**62)])
def test_dataframe_times_outside_pandas_range_are_nat(ms: int) -> None:
    pd = pytest.importorskip("pandas")
    run = Run.model_validate(
        {
            "info": {
                "run_id": "0" * 32,
                "experiment_id": "1",
                "run_name": "r",
                "status": "FINISHED",
                "start_time": ms,
                "end_time": FRAME_MIN_MS,
                "lifecycle_stage": "active",
                "artifact_uri": "file:///tmp/x",
            },
            "data": {},
        }
    )
    frame = runs_to_frame([run])
    assert pd.isna(frame["start_time"].iloc[0])
    assert frame["end_time"].iloc[0] == pd.Timestamp(FRAME_MIN_MS, unit="ms", tz="UTC")
