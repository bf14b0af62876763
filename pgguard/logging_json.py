"""The gateway's own log: plain text for people, or one JSON object a line for collectors.

Every line logged by a session's task (and the tasks it starts) carries that
session's id, the id of its session log: a context variable set when the
session starts, which trio copies into each task the session spawns. The
reactor, one task for all sessions, names the session in the line instead.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar

SESSION_ID: ContextVar[str | None] = ContextVar("pgguard_session_id", default=None)


class SessionIdFilter(logging.Filter):
    """The session id of the task logging, unless the line names one (`extra={"session_id": ...}`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "session_id", None) is None:
            record.session_id = SESSION_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """time (UTC, ISO 8601), level, logger, message, session_id when in a session, and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        session_id = getattr(record, "session_id", None)
        if session_id is not None:
            entry["session_id"] = session_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        session_id = getattr(record, "session_id", None)
        return f"{text} [session {session_id}]" if session_id is not None else text


def setup_logging(json_lines: bool = False, level: int = logging.INFO) -> None:
    """Log to stderr, as text or JSON lines; replaces whatever handlers were set up before."""
    handler = logging.StreamHandler()
    handler.addFilter(SessionIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else
                         _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
