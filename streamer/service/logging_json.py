"""Structured logs: one JSON object per line on stderr, from the stdlib `logging` module.

Every line has `ts` (RFC 3339, UTC, milliseconds), `level`, `logger` and `msg`; values passed as
`extra={...}` become top-level fields, and an exception adds `exc_type`, `exc` and `traceback`.

>>> import io
>>> stream = io.StringIO()
>>> configure_logging("INFO", stream=stream)
>>> logging.getLogger("rnnwatch.demo").info("batch done", extra={"readings": 3})
>>> line = orjson.loads(stream.getvalue())
>>> line["level"], line["logger"], line["msg"], line["readings"]
('INFO', 'rnnwatch.demo', 'batch done', 3)
"""

from __future__ import annotations

import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import IO, Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON; never raises on odd `extra` values (they become strings)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            exc_type, exc, tb = record.exc_info
            line["exc_type"] = exc_type.__name__
            line["exc"] = str(exc)
            line["traceback"] = "".join(traceback.format_exception(exc_type, exc, tb))
        return orjson.dumps(line, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> None:
    """Route every logger to one JSON handler on `stream` (stderr); kafka-python is kept at WARNING."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
