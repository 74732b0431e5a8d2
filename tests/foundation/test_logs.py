"""One log format: every line ``caducee serve`` writes is a JSON object, a refused TLS handshake is one
line and one audit event (never a traceback), and aiosmtpd's per-command lines stay out of the log."""

from __future__ import annotations

import io
import json
import logging
import smtplib
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from mailserver import logs
from tests.instance import MARTIN, SECRETARIAT, Instance

CADUCEE = str(Path(sys.executable).with_name("caducee"))
# RFC 4511 §4.14.1: LDAPMessage { messageID 1, extendedReq [APPLICATION 23] { requestName [0]
# "1.3.6.1.4.1.1466.20037" } }, BER-encoded.
LDAP_STARTTLS = bytes.fromhex("301d02010177188016") + b"1.3.6.1.4.1.1466.20037"


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


def old_tls() -> ssl.SSLContext:
    """A client that offers TLS 1.0 and 1.1 only (the server's minimum is 1.2)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def handshake_fails(sock: socket.socket, ctx: ssl.SSLContext) -> None:
    """The server refuses the handshake: at once, or (TLS 1.3, a client certificate it rejects) with an
    alert or a close right after the client's side of it."""
    with pytest.raises((ssl.SSLError, ConnectionError)), ctx.wrap_socket(sock) as tls:
        if not tls.recv(1):
            raise ConnectionError("closed by the server")
    sock.close()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def smtp_starttls_fails(port: int, ctx: ssl.SSLContext) -> None:
    sock = connect(port)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"EHLO client.test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    sock.sendall(b"STARTTLS\r\n")
    assert f.readline().startswith(b"220")
    handshake_fails(sock, ctx)


def imap_starttls_fails(port: int, ctx: ssl.SSLContext) -> None:
    sock = connect(port)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"* OK")
    sock.sendall(b"a STARTTLS\r\n")
    assert f.readline().startswith(b"a OK")
    handshake_fails(sock, ctx)


def ldap_starttls_fails(port: int, ctx: ssl.SSLContext) -> None:
    sock = connect(port)
    sock.sendall(LDAP_STARTTLS)
    head = sock.recv(2)
    assert head[0] == 0x30 and head[1] < 0x80, head  # a short SEQUENCE: the extended response
    body = b""
    while len(body) < head[1]:
        body += sock.recv(head[1] - len(body))
    assert b"\x0a\x01\x00" in body, body  # resultCode success (RFC 4511 §4.14.2)
    handshake_fails(sock, ctx)


def openssl_tls11(port: int, ca: str, *starttls: str) -> None:
    old = ["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", *old, "-CAfile", ca, *starttls],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0 and "Cipher is (NONE)" in r.stdout, r.stdout + r.stderr


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
def test_refused_tls_handshakes_are_one_json_line_and_an_audit_event(tmp_path: Path, pki: Any) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    inst.start()
    ports = inst.ports
    try:
        for service in ("smtp", "submission"):
            smtp_starttls_fails(ports[service], old_tls())
        imap_starttls_fails(ports["imap"], old_tls())
        ldap_starttls_fails(ports["ldap"], old_tls())
        for service in ("submissions", "imaps", "ldaps"):
            handshake_fails(connect(ports[service]), old_tls())
        # a peer whose certificate does not chain to tls.peer_ca (the test PKI is unknown to this instance)
        stranger = inst.tls()
        stranger.check_hostname = False
        stranger.load_cert_chain(pki.tls["b.mssante.test"].chain_path, pki.tls["b.mssante.test"].key_path)
        smtp_starttls_fails(ports["smtp"], stranger)
        # no cipher in common: RSA key exchange only, against an ECDSA certificate
        rsa_only = old_tls()
        rsa_only.maximum_version = ssl.TLSVersion.TLSv1_2
        rsa_only.set_ciphers("AES128-SHA")
        handshake_fails(connect(ports["submissions"]), rsa_only)
        openssl_tls11(ports["imaps"], inst.ca_file)
        openssl_tls11(ports["submission"], inst.ca_file, "-starttls", "smtp")
        expected = sorted(
            [("smtp", "UNSUPPORTED_PROTOCOL"), ("submission", "UNSUPPORTED_PROTOCOL")]
            + [("imap", "UNSUPPORTED_PROTOCOL"), ("ldap", "UNSUPPORTED_PROTOCOL")]
            + [(s, "UNSUPPORTED_PROTOCOL") for s in ("submissions", "imaps", "ldaps", "imaps", "submission")]
            + [("smtp", "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate")]
            + [("submissions", "NO_SHARED_CIPHER")]
        )
        inst.wait_for(lambda: len(inst.events("tls-handshake-failed")) >= len(expected))
        audited = json.loads(
            subprocess.run(
                [CADUCEE, "--config", str(inst.config), "audit", "list", "--action", "tls-refused", "--json"],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            ).stdout
        )
        inst.check_every_listener()  # and the listeners still serve
    finally:
        code = inst.stop()
    assert code == 0
    records = assert_all_json(inst)
    failed = [r for r in records if r.get("event") == "tls-handshake-failed"]
    assert sorted((r["service"], r["reason"]) for r in failed) == expected
    assert all(r["peer"] == "127.0.0.1" and r["level"] == "warning" for r in failed)
    assert sorted((e["request"].split()[0], e["response"]) for e in audited) == expected
    assert {(e["actor"], e["remote"]) for e in audited} == {("peer:127.0.0.1", "127.0.0.1")}


@pytest.mark.slow
def test_every_line_of_a_normal_session_is_json(tmp_path: Path) -> None:
    inst = Instance.init(CADUCEE, tmp_path / "data")
    inst.start()
    try:
        inst.check_every_listener()  # SMTP, submission, IMAP logins, the portal, LDAP binds
        with smtplib.SMTP("127.0.0.1", inst.ports["smtp"], timeout=30) as mta:
            mta.ehlo("mx.b.mssante.test")
            assert mta.mail(MARTIN)[0] == 530  # MAIL before STARTTLS: refused, and only audited
        # address books left open over TLS when the server stops
        idle = [inst.ldap("ldap"), inst.ldap("ldaps")]
    finally:
        code = inst.stop()
    assert code == 0
    records = assert_all_json(inst)
    assert [r["event"] for r in records if r.get("event") in ("ready", "stopping", "stopped")] == [
        "ready",
        "stopping",
        "stopped",
    ]
    # a clean stop: nothing at error level, no listener left waiting for a client's TLS goodbye
    assert [r for r in records if r["level"] not in ("info", "debug")] == []
    # aiosmtpd's INFO lines name every sender and recipient: kept out unless log_level = "debug"
    assert SECRETARIAT not in "".join(inst.lines) and MARTIN not in "".join(inst.lines)
    for conn in idle:
        conn.unbind()


@pytest.mark.slow
@pytest.mark.parametrize("level", ["info", "debug"])
def test_smtp_events_name_no_address_unless_debug(tmp_path: Path, level: str) -> None:
    """Issue 20 item 9: a submission session (a refused and an accepted recipient, a message) at the
    default level writes our JSON events — connection, refusal, acceptance with its queue id — and no
    sender or recipient address anywhere (aiosmtpd's command lines included); ``debug`` adds them."""
    unknown = "inconnu@a.mssante.test"
    inst = Instance.init(CADUCEE, tmp_path / "data")
    if level == "debug":
        config = inst.config.read_text(encoding="utf-8")
        inst.config.write_text(config.replace("[server]\n", '[server]\nlog_level = "debug"\n', 1), "utf-8")
    inst.start()
    try:
        with smtplib.SMTP("127.0.0.1", inst.ports["submission"], timeout=30) as client:
            client.starttls(context=inst.tls())
            client.login(MARTIN, inst.passwords[MARTIN])
            assert client.mail(MARTIN)[0] == 250
            assert client.rcpt(unknown)[0] == 550
            assert client.rcpt(SECRETARIAT)[0] == 250
            code, reply = client.data(b"Subject: compte rendu\r\n\r\nBonjour.\r\n")
            assert code == 250, reply
        queue_id = reply.decode().rsplit(" ", 1)[1]
        inst.wait_for(lambda: bool(inst.events("smtp-accepted")))
    finally:
        assert inst.stop() == 0
    assert_all_json(inst)
    [connection] = [e for e in inst.events("smtp-connection") if e["service"] == "submission"]
    assert connection["peer"] == "127.0.0.1" and connection["tls"] is False
    [refused] = inst.events("smtp-refused")
    assert (refused["service"], refused["command"], refused["reply"]) == ("submission", "RCPT", "550 5.1.1")
    [accepted] = inst.events("smtp-accepted")
    assert accepted["queue_id"] == queue_id and (accepted["delivered"], accepted["queued"]) == (1, 0)
    text = "".join(inst.lines)
    if level == "info":
        for address in (MARTIN, SECRETARIAT, unknown):
            assert address not in text
        assert "sender" not in accepted and "request" not in refused
    else:
        assert accepted["sender"] == MARTIN and accepted["recipients"] == [SECRETARIAT]
        assert unknown in refused["request"]
