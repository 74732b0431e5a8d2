"""A Caducée instance as an operator runs one: ``caducee init`` into a directory, then ``caducee serve``.

Every listener of the configuration ``init`` writes is moved to port 0 (free loopback ports, no race),
plus an LDAPS listener; the bound addresses come from the server's ``listening`` events. Shared by the
tests that need the real thing: the README's commands, the log format, a clean ``pip install``.
The clients are the standard library's (smtplib, imaplib, urllib) and ldap3, so they run anywhere.
"""

from __future__ import annotations

import email.message
import imaplib
import json
import re
import signal
import smtplib
import ssl
import subprocess
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3

from mailserver.store import identity

DOMAIN = "a.mssante.test"
PATIENT_DOMAIN = "patient.a.mssante.test"
MARTIN = f"dr.martin@{DOMAIN}"
SECRETARIAT = f"secretariat@{DOMAIN}"
BASE_DN = "ou=annuaire,dc=caducee"
PORT_SERVICES = ("smtp", "submission", "submissions", "imap", "imaps", "portal", "ldap", "ldaps", "admin")


@dataclass
class ServerProcess:
    """``caducee serve`` on ``directory/caducee.toml``, and the JSON lines it writes on stderr, read as
    they come."""

    caducee: str
    directory: Path
    lines: list[str] = field(default_factory=list, kw_only=True)
    proc: subprocess.Popen[str] | None = field(default=None, kw_only=True)
    _seen: threading.Condition = field(default_factory=threading.Condition, kw_only=True)
    _pump: threading.Thread | None = field(default=None, kw_only=True)

    @property
    def config(self) -> Path:
        return self.directory / "caducee.toml"

    def launch(self) -> None:
        """Start ``caducee serve`` without waiting for it."""
        self.lines = []
        self.proc = subprocess.Popen(
            [self.caducee, "--config", str(self.config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.directory,
        )
        self._pump = threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True)
        self._pump.start()

    def _read_stderr(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._seen:
                self.lines.append(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_for(self, condition: Any, timeout: float = 60) -> None:
        """Wait until ``condition()`` holds, woken by each line the server writes; fail if it exits."""
        with self._seen:
            met = self._seen.wait_for(
                lambda: condition() or (self.proc is not None and self.proc.poll() is not None), timeout
            )
        assert met and condition(), "condition not met; server log:\n" + "".join(self.lines)

    def notify(self) -> None:
        """Wake ``wait_for``, for a condition that another thread than the log reader changed."""
        with self._seen:
            self._seen.notify_all()

    def records(self) -> list[dict[str, Any]]:
        """The log lines that are JSON objects (all of them, if the server keeps its word)."""
        out = []
        for line in list(self.lines):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == name]

    def exit_code(self) -> int:
        """Wait for the server to exit and for its last log line."""
        assert self.proc is not None and self._pump is not None
        code = self.proc.wait(60)
        self._pump.join(10)
        return code

    def stop(self) -> int:
        """SIGTERM, then the exit status once every log line has been read."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.exit_code()


@dataclass
class Instance(ServerProcess):
    passwords: dict[str, str]

    @classmethod
    def init(cls, caducee: str, directory: Path, extra_config: str = "", *options: str) -> Instance:
        """``caducee init`` with the two demo mailboxes and ``options``, listeners moved to free ports,
        ``extra_config`` (TOML sections ``init`` does not write) appended."""
        directory.parent.mkdir(parents=True, exist_ok=True)
        args = [
            "--data-dir",
            str(directory),
            "--domain",
            DOMAIN,
            "--patient-domain",
            PATIENT_DOMAIN,
            *options,
        ]
        r = subprocess.run(
            [caducee, "init", *args, *options, "--demo-mailboxes"],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=directory.parent,
        )
        assert r.returncode == 0 and not r.stderr, r.stdout + r.stderr
        passwords = dict(re.findall(r"mailbox\s+(\S+) \(\w+\) password: (\S+)", r.stdout))
        assert set(passwords) == {MARTIN, SECRETARIAT}, r.stdout
        config = directory / "caducee.toml"
        # Listen addresses only (quoted whole), not a database URL naming 127.0.0.1:5432.
        text = re.sub(r'"127\.0\.0\.1:\d+"', '"127.0.0.1:0"', config.read_text(encoding="utf-8"))
        text = text.replace("[ldap]\n", '[ldap]\ntls_listen = ["127.0.0.1:0"]\n', 1)
        config.write_text(text + extra_config, encoding="utf-8")
        return cls(caducee, directory, passwords)

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``caducee --config DIR/caducee.toml ARGS``, as an operator types it."""
        return subprocess.run(
            [self.caducee, "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )

    def use_postgresql(self, url: str) -> None:
        """Point the instance at a new, empty PostgreSQL database and provision there what ``init``
        made in its SQLite one: the schema, the two domains, the demo mailboxes with their passwords."""
        text = self.config.read_text(encoding="utf-8")
        self.config.write_text(re.sub(r"(?m)^url = .*$", f'url = "{url}"', text, count=1), encoding="utf-8")
        # The store init marked belongs to init's SQLite database: a new database starts a new pair.
        (self.directory / "store" / identity.MARKER).unlink()
        assert self.run("db", "upgrade").returncode == 0
        for domain, flags in ((DOMAIN, []), (PATIENT_DOMAIN, ["--patients"])):
            assert self.run("domain", "add", domain, *flags).returncode == 0
        for address, kind in (
            (MARTIN, ["--type", "PER", "--rpps", "10000000009"]),
            (SECRETARIAT, ["--type", "ORG"]),
        ):
            made = self.run(
                "mailbox", "add", address, *kind, "--password-stdin", stdin=self.passwords[address] + "\n"
            )
            assert made.returncode == 0, made.stderr

    def start(self) -> None:
        """Start ``caducee serve`` and wait for its ``ready`` event."""
        self.launch()
        self.wait_for(lambda: any(e.get("event") == "ready" for e in self.records()), 90)

    @property
    def ports(self) -> dict[str, int]:
        return {
            e["service"]: int(e["address"].rsplit(":", 1)[1])
            for e in self.events("listening")
            if e["service"] in PORT_SERVICES
        }

    # ------------------------------------------------------------------ clients

    @property
    def ca_file(self) -> str:
        """The instance's first-run CA (its server certificate names 127.0.0.1)."""
        return str(self.directory / "tls" / "peer-ca.pem")

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def submit(self, sender: str, recipients: list[str], subject: str, implicit: bool = False) -> None:
        """Send a message through submission (STARTTLS, or implicit TLS) as ``sender``."""
        msg = email.message.EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = sender, ", ".join(recipients), subject
        msg.set_content("Bonjour,\ncompte rendu en pièce jointe.\n")
        if implicit:
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                "127.0.0.1", self.ports["submissions"], context=self.tls(), timeout=30
            )
        else:
            client = smtplib.SMTP("127.0.0.1", self.ports["submission"], timeout=30)
            client.starttls(context=self.tls())
        with client:
            client.login(sender, self.passwords[sender])
            refused = client.send_message(msg, sender, recipients)
        assert not refused, refused

    def imap(self, address: str, implicit: bool = True) -> imaplib.IMAP4:
        """A logged-in IMAP session (implicit TLS, or STARTTLS)."""
        if implicit:
            client: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                "127.0.0.1", self.ports["imaps"], ssl_context=self.tls(), timeout=30
            )
        else:
            client = imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=30)
            client.starttls(self.tls())
        client.login(address, self.passwords[address])
        return client

    def ldap(self, service: str) -> ldap3.Connection:
        """An LDAP session bound as dr.martin, after StartTLS (``ldap``) or over LDAPS (``ldaps``)."""
        implicit = service == "ldaps"
        server = ldap3.Server(
            "127.0.0.1", self.ports[service], use_ssl=implicit, tls=ldap3.Tls(ca_certs_file=self.ca_file)
        )
        conn = ldap3.Connection(server, MARTIN, self.passwords[MARTIN], receive_timeout=30)
        conn.open()
        assert implicit or conn.start_tls(), conn.result
        assert conn.bind(), conn.result
        return conn

    def check_every_listener(self) -> None:
        """Each listener answers as its protocol says: the SMTP banners, IMAP greetings and a message
        submitted then read back, the portal's home page, an LDAP bind and search after StartTLS and
        over LDAPS."""
        assert set(self.ports) == set(PORT_SERVICES), self.ports
        for path, expected in (("/healthz", {"status": "up"}), ("/readyz", {"ready": True})):
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['admin']}{path}", timeout=30) as r:
                assert r.status == 200 and json.load(r) == expected, path
        with smtplib.SMTP("127.0.0.1", self.ports["smtp"], timeout=30) as mta:
            code, banner = mta.ehlo("mx.b.mssante.test")
            assert code == 250 and b"STARTTLS" in banner, banner
            assert mta.starttls(context=self.tls())[0] == 220
        self.submit(MARTIN, [SECRETARIAT], "par submission")
        self.submit(MARTIN, [SECRETARIAT], "par submissions", implicit=True)
        with imaplib.IMAP4("127.0.0.1", self.ports["imap"], timeout=30) as plain:
            assert b"LOGINDISABLED" in plain.welcome and "STARTTLS" in plain.capabilities
        for implicit in (False, True):
            client = self.imap(SECRETARIAT, implicit)
            status, data = client.select("INBOX", readonly=True)
            assert status == "OK" and int(data[0] or 0) >= 2, data
            status, found = client.search(None, "SUBJECT", '"par submissions"')
            assert status == "OK" and found[0], found
            client.logout()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['portal']}/", timeout=30) as page:
            assert page.status == 200 and "text/html" in page.headers["Content-Type"]
        for service in ("ldap", "ldaps"):
            conn = self.ldap(service)
            conn.search(BASE_DN, "(mail=*)", attributes=["mail"])
            assert conn.result["result"] == 0, conn.result  # the national directory: empty after init
            conn.unbind()


LARGE = 100 * 1024  # above [storage] inline_max: a file in the store, not a row


class Load:
    """Clients writing without pause: ``senders`` submission clients mailing the secretariat as
    dr.martin (every other message ``LARGE``), ``appenders`` IMAP clients appending to dr.martin's
    INBOX. ``acked`` holds each subject answered 250 (DATA) or OK (APPEND), in the order the answers
    came: what the server promised to keep."""

    def __init__(self, inst: Instance, senders: int = 3, appenders: int = 0) -> None:
        self.inst = inst
        self.acked: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self.send, args=(n,)) for n in range(senders)]
        self.threads += [threading.Thread(target=self.append, args=(n,)) for n in range(appenders)]

    def _acked(self, subject: str) -> None:
        with self.lock:
            self.acked.append(subject)
        self.inst.notify()

    def send(self, n: int) -> None:
        try:
            client = smtplib.SMTP("127.0.0.1", self.inst.ports["submission"], timeout=60)
            client.starttls(context=self.inst.tls())
            client.login(MARTIN, self.inst.passwords[MARTIN])
            i = 0
            while not self.stop.is_set():
                subject = f"charge-{n}-{i}"
                msg = email.message.EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = MARTIN, SECRETARIAT, subject
                msg.set_content("Compte rendu.\n" + ("x" * 70 + "\n") * (LARGE // 71 if i % 2 else 1))
                client.send_message(msg, MARTIN, [SECRETARIAT])  # raises unless 250
                self._acked(subject)
                i += 1
            client.quit()
        except BaseException as exc:  # reported by the test thread
            self.errors.append(exc)
            self.inst.notify()

    def append(self, n: int) -> None:
        try:
            client = self.inst.imap(MARTIN)
            i = 0
            while not self.stop.is_set():
                subject = f"ajout-{n}-{i}"
                body = b"x" * LARGE if i % 2 else b"Note.\r\n"
                status, data = client.append(
                    "INBOX", None, None, f"Subject: {subject}\r\n\r\n".encode() + body
                )
                assert status == "OK", data
                self._acked(subject)
                i += 1
            client.logout()
        except BaseException as exc:
            self.errors.append(exc)
            self.inst.notify()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)

    def wait_for(self, count: int) -> None:
        self.inst.wait_for(lambda: len(self.acked) >= count or bool(self.errors), 120)

    def snapshot(self) -> set[str]:
        with self.lock:
            return set(self.acked)


def subjects_in_inbox(inst: Instance, address: str = SECRETARIAT) -> set[str]:
    """Every Subject in ``address``'s INBOX (one word each, as ``Load`` writes them)."""
    client = inst.imap(address)
    try:
        status, _ = client.select("INBOX", readonly=True)
        assert status == "OK"
        status, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert status == "OK", data
        found = set()
        for item in data:
            if isinstance(item, tuple):
                m = re.search(rb"Subject: (\S+)", item[1])
                assert m, item
                found.add(m.group(1).decode())
        return found
    finally:
        client.logout()
