"""Log formats (text or one JSON object per line) and the access log (one line per call).

The access log names a call by what is safe to keep: method, final code, duration,
peer, and the run and thread ids of the request (or of the run CreateRun made), plus
the trace id when tracing is on. It never reads the request's payloads (metadata,
kwargs, errors) nor any invocation metadata, so tokens and authorization headers
cannot reach it. It is off unless asked for (`--access-log`): a line per call
costs more than the call's own bookkeeping under load.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc

from .interceptor import Method
from .protocol import ProtocolOf

ACCESS_LOGGER = "runcontrol_server.access"
LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Ids come from the caller: bounded so a hostile one cannot bloat every line.
MAX_ID_CHARS = 200
# The LogRecord attribute holding an access line's fields.
FIELDS_ATTRIBUTE = "rpc"


def formatter(log_format: str) -> logging.Formatter:
    """The formatter for `--log-format` ("text" or "json")."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r}")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, FIELDS_ATTRIBUTE, None)
    return fields if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    """The classic line, with an access line's fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if not fields:
            return line
        # json.dumps quotes strings, so an id holding spaces or a newline can neither
        # split the line nor pose as another field.
        return line + "".join(f" {key}={json.dumps(value)}" for key, value in fields.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, an access line's fields,
    and `exception` (the traceback, newlines escaped) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a message argument of any type still makes a valid line.
        return json.dumps(entry, ensure_ascii=False, default=str)


def _id(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return value if len(value) <= MAX_ID_CHARS else value[:MAX_ID_CHARS] + "..."


def _created_run_id(response: Any) -> str | None:
    """The run id at the head of a pre-encoded CreateRunResponse: field 1 (the run),
    whose field 1 is `run_id` (see `servicer.wire`); None for anything else."""
    if not isinstance(response, bytes) or response[:1] != b"\x0a":
        return None
    position = 1
    while position < len(response) and response[position] & 0x80:  # the run's length
        position += 1
    position += 1
    if response[position : position + 1] != b"\x0a":
        return None
    size = response[position + 1] if position + 1 < len(response) else 0x80
    if size >= 0x80:  # ids are short; a longer one is not worth decoding here
        return None
    return _id(response[position + 2 : position + 2 + size].decode("utf-8", "replace"))


class AccessLog:
    """A `CallSink` writing one INFO line per call to the `runcontrol_server.access` logger."""

    def __init__(self, trace_id: Callable[[], str | None] | None = None) -> None:
        self._logger = logging.getLogger(ACCESS_LOGGER)
        self._trace_id = trace_id
        self._protocol_of = ProtocolOf()

    def __call__(
        self,
        method: Method,
        code: grpc.StatusCode,
        seconds: float,
        request: Any,
        context: Any,
        response: Any,
    ) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        fields: dict[str, Any] = {
            "service": method.service,
            "method": method.name,
            "code": code.name,
            "duration_ms": round(seconds * 1000, 3),
            "peer": context.peer(),
            "protocol": self._protocol_of(context),
        }
        run_id = _id(getattr(request, "run_id", None))
        if run_id is None and method.name == "CreateRun":
            run_id = _created_run_id(response)
        if run_id is not None:
            fields["run_id"] = run_id
        thread_id = _id(getattr(request, "thread_id", None))
        if thread_id is not None:
            fields["thread_id"] = thread_id
        if self._trace_id is not None:
            trace_id = self._trace_id()
            if trace_id is not None:
                fields["trace_id"] = trace_id
        logger.info("%s %s", method.name, code.name, extra={FIELDS_ATTRIBUTE: fields})
