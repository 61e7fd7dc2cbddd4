"""Wire models shared by the SDK and the service.

These pydantic models are the REST API's contract: the service validates requests with them and the
SDK parses responses with them. The SDK never imports the service; the service imports these.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

# Documented limits (MLflow's, where it has one).
MAX_KEY_LENGTH = 250
"""Longest metric, param or tag key."""
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000
MAX_EXPERIMENT_NAME_LENGTH = 500
MAX_RUN_NAME_LENGTH = 500
MAX_POINTS_PER_BATCH = 100_000
"""Most metric points one logging batch may carry (row and columnar forms together)."""
MAX_PARAMS_PER_BATCH = 1000
MAX_TAGS_PER_BATCH = 1000

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def _no_nul(value: str) -> str:
    # Postgres text cannot hold NUL, and no key, value or name needs one.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# The JSON schema of the OpenAPI document states each rule the validators enforce, so that a client
# generated from it never sends what the service refuses (the validators keep their own messages).
NO_NUL_PATTERN = r"^[^\x00]*$"
NOT_BLANK_PATTERN = r"^[^\x00]*[^\x00\s\x1c-\x1f\x85\ufeff][^\x00]*$"
"""No NUL and at least one character that is not whitespace (in Python's sense or JavaScript's)."""

_NO_NUL = AfterValidator(_no_nul)
_SAYS_NO_NUL = Field(json_schema_extra={"pattern": NO_NUL_PATTERN})

Key = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_LENGTH), _NO_NUL, _SAYS_NO_NUL]
ParamValue = Annotated[str, StringConstraints(max_length=MAX_PARAM_VALUE_LENGTH), _NO_NUL, _SAYS_NO_NUL]
TagValue = Annotated[str, StringConstraints(max_length=MAX_TAG_VALUE_LENGTH), _NO_NUL, _SAYS_NO_NUL]
ExperimentName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_EXPERIMENT_NAME_LENGTH),
    _NO_NUL,
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": NOT_BLANK_PATTERN}),
]
RunName = Annotated[str, StringConstraints(max_length=MAX_RUN_NAME_LENGTH), _NO_NUL, _SAYS_NO_NUL]
Int64 = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
Millis = Annotated[int, Field(ge=0, le=INT64_MAX, description="Epoch milliseconds.")]
EXPERIMENT_ID_PATTERN = r"^[0-9]{1,18}$"
RUN_ID_PATTERN = (
    r"^(?:[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
"""32 hex digits (what the service returns) or the dashed UUID form, which it accepts too."""
ExperimentId = Annotated[
    str, StringConstraints(pattern=EXPERIMENT_ID_PATTERN), Field(description="Decimal id.")
]
WireFloat = Annotated[
    float,
    WithJsonSchema({"anyOf": [{"type": "number"}, {"enum": ["NaN", "Infinity", "-Infinity"]}]}),
]
"""A float as JSON carries it: a number, or one of the strings NaN, Infinity, -Infinity."""


class _Model(BaseModel):
    """NaN and ±inf are valid metric values; JSON has no literal for them, so they travel as the strings
    "NaN", "Infinity" and "-Infinity" (which every model here also accepts as floats)."""

    model_config = ConfigDict(ser_json_inf_nan="strings")


class _Request(_Model):
    """Requests reject unknown fields, so a typo is an error rather than a silently ignored option."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class LifecycleStage(StrEnum):
    ACTIVE = "active"
    DELETED = "deleted"


class ViewType(StrEnum):
    ACTIVE_ONLY = "active_only"
    DELETED_ONLY = "deleted_only"
    ALL = "all"


class RunStatus(StrEnum):
    RUNNING = "RUNNING"
    SCHEDULED = "SCHEDULED"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


# --- experiments ------------------------------------------------------------------------------------


class Experiment(_Model):
    experiment_id: str
    name: str
    artifact_location: str
    lifecycle_stage: LifecycleStage
    creation_time: int
    last_update_time: int
    tags: dict[str, str] = {}


class ExperimentCreate(_Request):
    name: ExperimentName
    artifact_location: Annotated[str, StringConstraints(max_length=2000), _NO_NUL, _SAYS_NO_NUL] | None = None
    tags: dict[Key, TagValue] = {}


class ExperimentGetOrCreateResult(_Model):
    experiment: Experiment
    created: bool = Field(description="True when this call created the experiment.")


class ExperimentUpdate(_Request):
    name: ExperimentName


class ExperimentList(_Model):
    experiments: list[Experiment]
    next_page_token: str | None = None


class TagSet(_Request):
    key: Key
    value: TagValue


# --- runs -------------------------------------------------------------------------------------------


class RunInfo(_Model):
    run_id: str = Field(description="32 lowercase hex digits.")
    experiment_id: str
    run_name: str
    status: RunStatus
    start_time: int
    end_time: int | None = None
    lifecycle_stage: LifecycleStage
    artifact_uri: str
    parent_run_id: str | None = None


class RunData(_Model):
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    metrics: dict[str, WireFloat] = Field(default={}, description="Latest value of each metric key.")


class Run(_Model):
    info: RunInfo
    data: RunData


class RunCreate(_Request):
    experiment_id: ExperimentId
    run_name: RunName | None = None
    start_time: Millis | None = None
    status: RunStatus = RunStatus.RUNNING
    tags: dict[Key, TagValue] = {}
    parent_run_id: UUID | None = None


class RunUpdate(_Request):
    status: RunStatus | None = None
    end_time: Millis | None = None
    run_name: RunName | None = None


class RunList(_Model):
    runs: list[Run]
    next_page_token: str | None = None


# --- logging ----------------------------------------------------------------------------------------


class Metric(_Model):
    key: Key
    value: WireFloat = Field(description="NaN, Infinity and -Infinity are valid values.")
    step: Int64 = 0
    timestamp: Millis | None = Field(default=None, description="Defaults to the server's clock.")


class Param(_Model):
    key: Key
    value: ParamValue


class RunTag(_Model):
    key: Key
    value: TagValue


class MetricColumns(_Request):
    """The points of one metric key as parallel arrays (of equal length, which the service checks):
    the compact form for large batches."""

    values: list[WireFloat]
    steps: list[Int64] | None = Field(default=None, description="Defaults to 0 for every point.")
    timestamps: list[Millis] | None = Field(default=None, description="Defaults to the server's clock.")

    @model_validator(mode="after")
    def _same_lengths(self) -> Self:
        n = len(self.values)
        for name in ("steps", "timestamps"):
            column = getattr(self, name)
            if column is not None and len(column) != n:
                raise ValueError(f"'{name}' has {len(column)} entries but 'values' has {n}")
        return self


class LogBatch(_Request):
    """Params, tags and metric points for one run, applied all together or not at all."""

    batch_id: UUID | None = Field(
        default=None, description="Client-generated id: a batch retried with the same id is applied once."
    )
    metrics: list[Metric] = []
    metric_columns: dict[Key, MetricColumns] = {}
    params: Annotated[list[Param], Field(max_length=MAX_PARAMS_PER_BATCH)] = []
    tags: Annotated[list[RunTag], Field(max_length=MAX_TAGS_PER_BATCH)] = []

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        points = len(self.metrics) + sum(len(c.values) for c in self.metric_columns.values())
        if points > MAX_POINTS_PER_BATCH:
            raise ValueError(f"a batch may carry at most {MAX_POINTS_PER_BATCH} metric points, got {points}")
        return self

    @field_validator("params", "tags")
    @classmethod
    def _no_conflicting_keys(cls, items: list[Any]) -> list[Any]:
        seen: dict[str, str] = {}
        for item in items:
            if seen.setdefault(item.key, item.value) != item.value:
                raise ValueError(f"key '{item.key}' is given twice with different values")
        return items


class LogBatchResult(_Model):
    applied: bool = Field(description="False when a batch with this batch_id had already been applied.")
    points: int = Field(description="Metric points in the batch.")


class MetricHistory(_Model):
    """Points of one metric as parallel arrays, ordered by (step, timestamp, arrival)."""

    key: str
    steps: list[int]
    timestamps: list[int]
    values: list[WireFloat] = Field(description="Non-finite values are the strings NaN, Infinity, -Infinity.")
    next_page_token: str | None = None


# --- errors -----------------------------------------------------------------------------------------


class ErrorDetail(_Model):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(_Model):
    error: ErrorDetail


# --- artifacts --------------------------------------------------------------------------------------

MAX_ARTIFACT_PATH_LENGTH = 1000
"""Longest artifact path, in characters (S3 keys are at most 1024 bytes including the run's prefix)."""
MAX_ARTIFACT_SIZE = 5 * 1024**4
"""Largest artifact file: 5 TiB, the S3 object limit."""
MAX_UPLOAD_FILES = 1000
"""Most files one upload request may plan."""
MAX_PARTS = 10_000
"""Most parts of a multipart upload (the S3 limit)."""
MAX_PART_URLS = 1000
"""Most part URLs one request may ask for."""

_PATH_PART = r"(?!\.\.?(?:/|$))(?:[\x20-\x2e\x30-\x5b\x5d-\x7e]{1,255}|[^\x00-\x1f\x7f/\\]{1,63})"
"""One part of an artifact path: not '.' or '..', no control character, '/' or '\\', at most 255 UTF-8
bytes (which a pattern can only say as: up to 255 ASCII characters, or up to 63 of any kind)."""
ARTIFACT_PATH_PATTERN = rf"^{_PATH_PART}(?:/{_PATH_PART})*$"
"""A file's path as the service takes it (it also drops '.' parts and one trailing '/')."""
ARTIFACT_FOLDER_PATTERN = rf"^(?:{_PATH_PART}(?:/{_PATH_PART})*/?)?$"
"""A folder's path: '' is the run's root, and a trailing '/' is allowed."""

ArtifactPath = Annotated[
    str,
    Field(
        description="Relative to the run's artifact root, '/'-separated, e.g. 'model/weights.bin'; at "
        f"most {MAX_ARTIFACT_PATH_LENGTH} characters, no '..', '\\', NUL, control characters or empty "
        "parts (checked by the service, which answers 400 naming the field).",
        json_schema_extra={"pattern": ARTIFACT_PATH_PATTERN, "maxLength": MAX_ARTIFACT_PATH_LENGTH},
    ),
]
PartNumber = Annotated[int, Field(ge=1, le=MAX_PARTS)]
StorageToken = Annotated[str, StringConstraints(min_length=1, max_length=1024), _NO_NUL, _SAYS_NO_NUL]
"""An upload id or ETag, as storage issued it."""


class FileInfo(_Model):
    path: str = Field(description="Relative to the run's artifact root; folders have no trailing '/'.")
    is_dir: bool
    file_size: int | None = Field(default=None, description="Bytes; None for a folder.")


class ArtifactList(_Model):
    """One level of a run's artifact tree, like a directory listing, ordered by path."""

    root_uri: str = Field(description="The run's artifact_uri.")
    files: list[FileInfo]
    next_page_token: str | None = None


class UploadFile(_Request):
    path: ArtifactPath
    size: int = Field(ge=0, le=MAX_ARTIFACT_SIZE, description="Exact size of the file in bytes.")


class UploadRequest(_Request):
    """Files to upload to a run; the answer says, per file, where to PUT its bytes."""

    files: Annotated[list[UploadFile], Field(min_length=1, max_length=MAX_UPLOAD_FILES)]


class UploadPart(_Model):
    part_number: int = Field(description="1-based; part n carries bytes [(n-1)*part_size, n*part_size).")
    url: str = Field(description="PUT the part's bytes here (with a Content-Length); keep the reply's ETag.")


class MultipartUpload(_Model):
    upload_id: str
    part_size: int = Field(description="Bytes per part; the last part carries the remainder.")
    part_count: int
    parts: list[UploadPart] = Field(
        description="URLs for the first parts (all of them for most files); ask .../uploads/parts for the "
        "rest or for fresh ones once these expire."
    )


class ArtifactUpload(_Model):
    """Where to send one file: a single `url`, or a `multipart` upload to finish with .../uploads/complete."""

    path: str = Field(description="The normalised path the file will have.")
    size: int
    url: str | None = Field(default=None, description="PUT the whole file here (with a Content-Length).")
    multipart: MultipartUpload | None = None
    expires_at: int = Field(description="Epoch milliseconds after which the URLs are refused.")


class UploadPlan(_Model):
    uploads: list[ArtifactUpload] = Field(description="In the order of the request's files.")


class PartUrlsRequest(_Request):
    path: ArtifactPath
    upload_id: StorageToken
    part_numbers: Annotated[list[PartNumber], Field(min_length=1, max_length=MAX_PART_URLS)]


class PartUrls(_Model):
    parts: list[UploadPart]
    expires_at: int = Field(description="Epoch milliseconds after which the URLs are refused.")


class CompletedPart(_Request):
    part_number: PartNumber
    etag: StorageToken = Field(description="The ETag header the part's PUT answered with.")


class MultipartComplete(_Request):
    path: ArtifactPath
    upload_id: StorageToken
    parts: Annotated[list[CompletedPart], Field(min_length=1, max_length=MAX_PARTS)] = Field(
        description="Every part, in part-number order."
    )


class MultipartAbort(_Request):
    path: ArtifactPath
    upload_id: StorageToken


class MultipartAborted(_Model):
    path: str
    upload_id: str


class ArtifactDownload(_Model):
    path: str = Field(description="Relative to the run's artifact root.")
    file_size: int
    url: str = Field(description="GET the file's bytes here (Range requests work).")


class DownloadList(_Model):
    """The file at a path, or every file under a folder (recursively, ordered by path), with GET URLs."""

    files: list[ArtifactDownload]
    expires_at: int = Field(description="Epoch milliseconds after which the URLs are refused.")
    next_page_token: str | None = None


class ArtifactPurge(_Model):
    deleted_files: int = Field(description="Files removed from storage.")
    aborted_uploads: int = Field(description="Unfinished multipart uploads discarded.")


# --- search -----------------------------------------------------------------------------------------

MAX_SEARCH_RESULTS = 50_000
"""Largest page a search may ask for."""
MAX_FILTER_LENGTH = 20_000
MAX_ORDER_BY_KEYS = 10

SearchFilter = Annotated[
    str,
    StringConstraints(max_length=MAX_FILTER_LENGTH),
    _NO_NUL,
    _SAYS_NO_NUL,
    Field(description="The filter language of docs/search.md, e.g. \"metrics.acc > 0.9 AND tags.t = 'x'\"."),
]
OrderByClause = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1000),
    _NO_NUL,
    _SAYS_NO_NUL,
    Field(description="An identifier, then ASC (default) or DESC, e.g. 'metrics.acc DESC'."),
]


class RunSearch(_Request):
    """Runs matching a filter, across one, several or all experiments, in a stable order, paged."""

    experiment_ids: Annotated[list[ExperimentId], Field(min_length=1, max_length=1000)] | None = Field(
        default=None, description="Experiments to search; omitted: every active experiment."
    )
    filter: SearchFilter = ""
    order_by: Annotated[list[OrderByClause], Field(max_length=MAX_ORDER_BY_KEYS)] = Field(
        default=[], description="Sort keys in priority order; default: start_time DESC. Ties: run_id."
    )
    max_results: int = Field(default=1000, ge=1, le=MAX_SEARCH_RESULTS)
    page_token: str | None = Field(default=None, description="next_page_token of the previous page.")
    view_type: ViewType = ViewType.ACTIVE_ONLY


class ExperimentSearch(_Request):
    """Experiments matching a filter on name, attributes and tags (e.g. "name LIKE 'bert%'"), paged."""

    filter: SearchFilter = ""
    order_by: Annotated[list[OrderByClause], Field(max_length=MAX_ORDER_BY_KEYS)] = Field(
        default=[], description="Sort keys in priority order; default: newest first (experiment_id DESC)."
    )
    max_results: int = Field(default=1000, ge=1, le=MAX_SEARCH_RESULTS)
    page_token: str | None = Field(default=None, description="next_page_token of the previous page.")
    view_type: ViewType = ViewType.ACTIVE_ONLY
