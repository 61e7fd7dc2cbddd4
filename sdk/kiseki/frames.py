"""Runs as a pandas DataFrame (needs `kiseki[pandas]`), with MLflow's column names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from kiseki.models import Run

_INFO = ["run_id", "experiment_id", "run_name", "status", "artifact_uri", "start_time", "end_time"]
FRAME_MIN_MS = -9_223_372_036_854
FRAME_MAX_MS = 9_223_372_036_854
"""Times a frame shows (about 1677-09-22 to 2262-04-11 UTC): those a nanosecond pandas Timestamp holds,
the narrowest resolution pandas may pick, so a frame is the same under pandas 2 and 3."""


def _timestamps(values: Sequence[int | None]) -> Any:
    """Epoch milliseconds as aware UTC timestamps; None and times a Timestamp cannot hold become NaT
    (the API accepts any int64 time; the exact value stays in `Run.info`)."""
    known = [ms if ms is not None and FRAME_MIN_MS <= ms <= FRAME_MAX_MS else None for ms in values]
    return pd.to_datetime(pd.Series(known, dtype="Int64"), unit="ms", utc=True)


def runs_to_frame(runs: Sequence[Run]) -> Any:
    """One row per run: the info columns, then `params.<k>`, `metrics.<k>` and `tags.<k>` (NaN when a
    run lacks a key). Times are timezone-aware UTC timestamps, as in MLflow; one outside what a pandas
    Timestamp holds (e.g. microseconds sent as milliseconds) is NaT rather than an error."""
    rows: list[dict[str, Any]] = []
    for run in runs:
        row: dict[str, Any] = {name: getattr(run.info, name) for name in _INFO}
        row["status"] = run.info.status.value
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=_INFO) if not rows else pd.DataFrame(rows)
    for column in ("start_time", "end_time"):
        frame[column] = _timestamps([getattr(run.info, column) for run in runs])
    prefixes = ("params.", "metrics.", "tags.")
    extra = sorted(c for c in frame.columns if c.startswith(prefixes))
    ordered = [*_INFO, *sorted(extra, key=lambda c: (prefixes.index(c.split(".", 1)[0] + "."), c))]
    return frame[ordered]
