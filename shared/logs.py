"""Logging: structured JSON for services (one object per line, with the correlation id and
trace id of the event being handled), plain text for people at a terminal."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime

from shared import telemetry

# The correlation id of the event being handled, for every log line written meanwhile.
correlation: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation", default=None)

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if (value := correlation.get()) is not None:
            entry["correlationid"] = value
        if (trace_id := telemetry.trace_id()) is not None:
            entry["trace_id"] = trace_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(service: str | None, *, verbose: bool = False, json_lines: bool | None = None) -> None:
    """JSON lines when running a service (or when asked), readable text otherwise."""
    level = logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    use_json = json_lines if json_lines is not None else service is not None
    if use_json:
        handler.setFormatter(JsonFormatter(service or "cli"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "faststream", "botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not use_json:
        # A person at a terminal: the client's retries while a fresh broker elects its group
        # coordinator are noise; failures still reach them as one line from the command.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
