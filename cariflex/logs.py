"""Structured logging for every Cariflex process: one JSON object per line on stderr.

Extra fields passed with ``log.info("msg", extra={"fields": {...}})`` are merged into the line,
so log shippers and ``jq`` can filter on them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str | None = None) -> None:
    """Route the root logger to stderr as JSON lines (idempotent)."""
    from cariflex import settings

    root = logging.getLogger()
    root.setLevel((level or settings.get("CARIFLEX_LOG_LEVEL") or "INFO").upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.handlers[:] = [handler]
