"""One log format for the whole process: a JSON object per line on stderr, for our loggers and the
libraries' (aiosmtpd, asyncio, aiohttp, alembic) alike, so operators parse one format and a client can
never make the server write a multi-line traceback.

Every line has ``ts`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; an event logged with
``log_event`` also has ``event`` and its own fields (``{"event":"listening","service":"imap",...}``);
a logged exception is one ``exception`` string. Under ``[server] workers`` > 1 every line of a worker
also has ``worker`` (its index) and ``pid``, so one session's lines can be told from another worker's.
Keys are never renamed, only added.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

log = logging.getLogger("caducee")

# aiosmtpd logs every SMTP command at INFO, recipient addresses included (health metadata): those lines
# are kept for ``[server] log_level = "debug"``.
_CHATTY = ("mail.log",)
# The fields every line of this process carries (``worker`` and ``pid`` in a worker process).
_PROCESS: dict[str, object] = {}


def log_event(event: str, /, level: int = logging.INFO, **fields: object) -> None:
    """One structured line: what operators grep for and what the tests wait for."""
    log.log(level, event, extra={"event": event, "fields": fields})


def set_worker(index: int, pid: int) -> None:
    """Mark every following line of this (worker) process with its index and pid."""
    _PROCESS.update(worker=index, pid=pid)


def private(**fields: object) -> dict[str, object]:
    """Fields that name people (senders, recipients: health metadata), for ``log_event``: kept only
    at ``[server] log_level = "debug"``, like aiosmtpd's command lines; the audit trail (who asked,
    for whom) is where they belong otherwise."""
    return fields if log.isEnabledFor(logging.DEBUG) else {}


def reply_code(reply: str) -> str:
    """An SMTP reply without its text (``550 5.1.1``): the text may repeat an address."""
    return " ".join(reply.split()[:2])


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_PROCESS,
        }
        event = getattr(record, "event", None)
        if isinstance(event, str):
            line["event"] = event
            fields = getattr(record, "fields", {})
            line.update({k: v for k, v in fields.items() if k not in line})  # never overwrite
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, separators=(",", ":"), default=str)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (click's test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure(level: str) -> None:
    """Send every logger's records to stderr as JSON lines (once per process: the handler is replaced,
    never added twice), Python warnings included."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Stderr)]:
        root.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(JSONFormatter())
    root.addHandler(handler)
    logging.captureWarnings(True)
    set_level(level)


def set_level(level: str) -> None:
    """``debug``, ``info``, ``warning`` or ``error`` for the process; aiosmtpd's per-command lines only
    in ``debug``."""
    logging.getLogger().setLevel(level.upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
