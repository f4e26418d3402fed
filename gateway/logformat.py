"""Log lines as plain text (the default) or one JSON object per line (``--log-format json``).

JSON lines are for journald, Loki, Elasticsearch and the like: every line carries ``time``
(UTC, ISO 8601), ``level``, ``logger`` and ``message``, and the ids an operator searches by —
``alarm_id``, ``device_id``, ``hop`` — when the code that logs knows them. They come from
``extra={...}`` on the log call, or from ``log_ids(...)``, which binds them for everything
logged in the block (a contextvar, so concurrent tasks keep their own).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# The context ids a JSON line may carry, in this order.
CONTEXT_IDS = ("alarm_id", "device_id", "hop")
_HANDLER_NAME = "trygg"

_BOUND: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "trygg_log_ids", default=())


@contextlib.contextmanager
def log_ids(*, alarm_id: str | None = None, device_id: str | None = None,
            hop: str | None = None) -> Iterator[None]:
    """Put these ids on every line logged inside the block (in this task)."""
    given = {"alarm_id": alarm_id, "device_id": device_id, "hop": hop}
    merged = dict(_BOUND.get())
    merged.update({k: v for k, v in given.items() if v is not None})
    token = _BOUND.set(tuple(merged.items()))
    try:
        yield
    finally:
        _BOUND.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = dict(_BOUND.get())
        for name in CONTEXT_IDS:
            # ``extra=`` on the call wins over the block's binding: it is the more specific.
            value = getattr(record, name, None)
            if value is not None:
                ids[name] = str(value)
        line.update((name, ids[name]) for name in CONTEXT_IDS if name in ids)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter(fmt: LogFormat) -> logging.Formatter:
    """The formatter for ``fmt``."""
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str | int, fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Set up the root logger for the ``trygg`` command.

    Called again (``run`` reads ``log_format`` from its settings file), it replaces the
    handler it added before and leaves other handlers (a test's capture) alone.
    """
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter(fmt))
    root = logging.getLogger()
    for old in root.handlers[:]:
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
