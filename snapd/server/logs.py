"""Daemon logging: text or JSON lines on stderr (journald adds its own timestamps under systemd).

Each call is logged as one line with its method, workspace, status and latency:

    2026-11-27T07:42:48.123Z INFO snapd.call CreateSnapshot workspace=3 code=OK ms=1.234
    {"ts": "...", "level": "INFO", "logger": "snapd.call", "msg": "CreateSnapshot",
     "workspace": 3, "code": "OK", "ms": 1.234}
"""

from __future__ import annotations

import json
import logging
import sys
import time

call_log = logging.getLogger("snapd.call")


def _timestamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        line = f"{_timestamp(record)} {record.levelname} {record.name} {record.getMessage()}"
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())


def log_call(method: str, workspace: int | None, code: str, ms: float, **extra) -> None:
    fields = {
        "workspace": workspace if workspace and workspace > 0 else "-",
        "code": code,
        "ms": round(ms, 3),
    }
    fields.update(extra)
    call_log.info(method, extra={"fields": fields})
