"""kiseki: fast experiment tracking. The Python SDK (and the wire models shared with the service).

import kiseki

kiseki.set_tracking_uri("http://127.0.0.1:5000")
kiseki.set_experiment("mnist")
with kiseki.start_run(run_name="baseline"):
    kiseki.log_params({"lr": 0.001, "epochs": 10})
    for step in range(100):
        kiseki.log_metric("loss", 1 / (step + 1), step=step)
"""

__version__ = "0.1.0"

from kiseki.async_client import AsyncClient
from kiseki.client import Client
from kiseki.config import get_tracking_uri, set_tracking_uri
from kiseki.errors import (
    Conflict,
    InvalidInput,
    InvalidType,
    KisekiError,
    NotFound,
    NotKisekiServer,
    PermissionDenied,
    ServerUnavailable,
    Unauthenticated,
    UnsafeArtifactPath,
)
from kiseki.fluent import (
    ActiveRun,
    active_run,
    download_artifacts,
    end_run,
    flush,
    get_experiment_by_name,
    get_run,
    last_active_run,
    log_artifact,
    log_artifacts,
    log_dict,
    log_metric,
    log_metrics,
    log_param,
    log_params,
    log_text,
    search_runs,
    set_experiment,
    set_tag,
    set_tags,
    start_run,
)
from kiseki.models import (
    Experiment,
    FileInfo,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)
from kiseki.paging import PagedList

__all__ = [
    "ActiveRun",
    "AsyncClient",
    "Client",
    "Conflict",
    "Experiment",
    "FileInfo",
    "InvalidInput",
    "InvalidType",
    "KisekiError",
    "Metric",
    "NotFound",
    "NotKisekiServer",
    "PagedList",
    "Param",
    "PermissionDenied",
    "Run",
    "RunData",
    "RunInfo",
    "RunStatus",
    "RunTag",
    "ServerUnavailable",
    "Unauthenticated",
    "UnsafeArtifactPath",
    "ViewType",
    "__version__",
    "active_run",
    "download_artifacts",
    "end_run",
    "flush",
    "get_experiment_by_name",
    "get_run",
    "get_tracking_uri",
    "last_active_run",
    "log_artifact",
    "log_artifacts",
    "log_dict",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "log_text",
    "search_runs",
    "set_experiment",
    "set_tag",
    "set_tags",
    "set_tracking_uri",
    "start_run",
]
