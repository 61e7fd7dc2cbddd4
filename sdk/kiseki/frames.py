"""Runs as a pandas DataFrame (needs `kiseki[pandas]`), with MLflow's column names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from kiseki.models import Run

_INFO = ["run_id", "experiment_id", "run_name", "status", "artifact_uri", "start_time", "end_time"]


def runs_to_frame(runs: Sequence[Run]) -> Any:
    """One row per run: the info columns, then `params.<k>`, `metrics.<k>` and `tags.<k>` (NaN when a
    run lacks a key). Times are timezone-aware UTC timestamps, as in MLflow."""
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
        frame[column] = pd.to_datetime(frame[column], unit="ms", utc=True)
    prefixes = ("params.", "metrics.", "tags.")
    extra = sorted(c for c in frame.columns if c.startswith(prefixes))
    ordered = [*_INFO, *sorted(extra, key=lambda c: (prefixes.index(c.split(".", 1)[0] + "."), c))]
    return frame[ordered]
