"""One log format: every line ``caducee serve`` writes is a JSON object, a refused TLS handshake is one
line and one audit event (never a traceback), and aiosmtpd's per-command lines stay out of the log."""

from __future__ import annotations

import io
import json
import logging
import smtplib
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from mailserver import logs
from tests.instance import MARTIN, SECRETARIAT, Instance

CADUCEE = str(Path(sys.executable).with_name("caducee"))


def render(record: Any) -> dict[str, Any]:
    """The formatter's line for ``record``, parsed back: it must be one line of JSON."""
    line = logs.JSONFormatter().format(record)
    assert "\n" not in line
    value = json.loads(line)
    assert isinstance(value, dict)
    return value


def capture(logger: logging.Logger) -> tuple[io.StringIO, logging.Handler]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JSONFormatter())
    logger.addHandler(handler)
    return out, handler


def test_an_event_is_rendered_once_with_its_fields_at_the_top_level() -> None:
    out, handler = capture(logs.log)
    logs.log.setLevel(logging.INFO)
    try:
        logs.log_event("listening", service="imap", address="127.0.0.1:143", level_of="x", message="no")
    finally:
        logs.log.removeHandler(handler)
        logs.log.setLevel(logging.NOTSET)
    (line,) = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "listening" and record["service"] == "imap"
    assert record["address"] == "127.0.0.1:143" and record["level_of"] == "x"
    # the stable keys are not overridden by a field, and nothing is JSON inside JSON
    assert record["message"] == "listening" and record["level"] == "info" and record["logger"] == "caducee"
    assert set(record) >= {"ts", "level", "logger", "message"}
    assert record["ts"].endswith("+00:00")


def test_a_foreign_record_with_an_exception_is_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "asyncio", logging.ERROR, __file__, 1, "task %s failed", ("t1",), sys.exc_info()
        )
    line = render(record)
    assert line["message"] == "task t1 failed" and line["logger"] == "asyncio" and line["level"] == "error"
    assert "ValueError: boom" in line["exception"] and "event" not in line


def test_configure_routes_every_logger_and_warnings_through_one_handler(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    try:
        logs.configure("info")
        logs.configure("info")  # never two handlers
        assert len([h for h in root.handlers if isinstance(h.formatter, logs.JSONFormatter)]) == 1
        logging.getLogger("aiohttp.server").warning("bad request from %s", "127.0.0.1")
        logging.getLogger("mail.log").info("('127.0.0.1', 4242) >> b'RCPT TO:<%s>'", SECRETARIAT)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        assert [line["logger"] for line in lines] == ["aiohttp.server", "py.warnings"]
        assert SECRETARIAT not in json.dumps(lines)
        logs.set_level("debug")
        assert logging.getLogger("mail.log").getEffectiveLevel() == logging.DEBUG
        logs.set_level("warning")
        assert logging.getLogger("mail.log").getEffectiveLevel() == logging.WARNING
    finally:
        for handler in [h for h in root.handlers if h not in before[0]]:
            root.removeHandler(handler)
        root.setLevel(before[1])
        logging.captureWarnings(False)
        logging.getLogger("mail.log").setLevel(logging.NOTSET)


# ---------------------------------------------------------------------------------------------- a real server


def assert_all_json(inst: Instance) -> list[dict[str, Any]]:
    assert inst.lines
    records = []
    for line in inst.lines:
        record = json.loads(line)
        assert isinstance(record, dict) and {"ts", "level", "logger", "message"} <= set(record), line
        records.append(record)
    assert "Traceback" not in "".join(inst.lines)
    return records


@pytest.mark.slow
def test_every_line_of_a_normal_session_is_json(tmp_path: Path) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    inst.start()
    try:
        inst.check_every_listener()  # SMTP, submission, IMAP logins, the portal, LDAP binds
        with smtplib.SMTP("127.0.0.1", inst.ports["smtp"], timeout=30) as mta:
            mta.ehlo("mx.b.mssante.test")
            assert mta.mail(MARTIN)[0] == 530  # MAIL before STARTTLS: refused, and only audited
    finally:
        code = inst.stop()
    assert code == 0
    records = assert_all_json(inst)
    assert [r["event"] for r in records if r.get("event") in ("ready", "stopping", "stopped")] == [
        "ready",
        "stopping",
        "stopped",
    ]
    # aiosmtpd's INFO lines name every sender and recipient: kept out unless log_level = "debug"
    assert SECRETARIAT not in "".join(inst.lines) and MARTIN not in "".join(inst.lines)
