"""Service logging: human-readable lines or one JSON object per line, each tagged with its request id.

The request id lives in a context variable that the telemetry middleware sets for the duration of a
request, so every record logged while serving it (an unhandled error included) carries the id the client
sent in `X-Request-ID` or the one the service made up and echoed back.
"""

from __future__ import annotations

import logging
import sys
import time
from contextvars import ContextVar
from typing import IO

import orjson

from kiseki_server.config import Settings

REQUEST_ID: ContextVar[str | None] = ContextVar("kiseki_request_id", default=None)

ACCESS_LOGGER = "kiseki_server.access"
_ACCESS_FIELDS = ("method", "path", "status", "duration_ms")


class _RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being served (None outside requests)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id]: message`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        record.request_tag = f" [{request_id}]" if request_id else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, pid, request_id when serving a
    request, the access fields on access lines, and the traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = int(record.created)
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
            + f".{int((record.created - seconds) * 1000):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        for name in _ACCESS_FIELDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class _OneLine(logging.Filter):
    """Folds a record's traceback into its message: asyncpg's pool logs one, with traceback, each time it
    fails to reconnect during a Postgres outage, which the service already reports (see db.OutageLog)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


QUIET_TRACEBACKS = ("asyncpg.pool",)


def log_handler(log_format: str, stream: IO[str]) -> logging.Handler:
    """A handler writing `log_format` ('text' or 'json') lines to `stream`, request ids included."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestIdFilter())
    return handler


def configure_logging(settings: Settings) -> None:
    """Send the service's records to stderr in the configured format (replacing earlier handlers)."""
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(log_handler(settings.log_format, sys.stderr))
    root.setLevel(settings.log_level.upper())
    for name in QUIET_TRACEBACKS:
        quiet = logging.getLogger(name)
        if not any(isinstance(f, _OneLine) for f in quiet.filters):
            quiet.addFilter(_OneLine())
