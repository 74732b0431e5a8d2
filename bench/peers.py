"""Private instances of the peers Caducée is measured against (Dovecot, Postfix), for bench/.

Each runs from a configuration generated in a temporary directory, listens on an unprivileged port of
127.0.0.1 only, and is stopped (and its directory removed) when its ``with`` block ends, whatever ends
it (normal end, exception, Ctrl-C). Debian's packages are installed when missing, without starting the
system's own instance: Debian's ``invoke-rc.d`` asks ``/usr/sbin/policy-rc.d``, which is made to
answer 101 ("action forbidden") for the time of the installation when the machine has none.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (released at once; the peer binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_packages(binary: str, packages: list[str], debconf: str = "") -> None:
    """Install Debian ``packages`` when ``binary`` is missing, non-interactively, services not started."""
    if shutil.which(binary):
        return
    if os.geteuid() != 0:
        raise SystemExit(f"{binary} is missing: run as root to install {' '.join(packages)}, or install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if debconf:
        subprocess.run(["debconf-set-selections"], input=debconf, text=True, check=True)
    ours = not POLICY_RC_D.exists()
    if ours:
        POLICY_RC_D.write_text(
            "#!/bin/sh\n# bench/peers.py: no service starts during installation\nexit 101\n"
        )
        POLICY_RC_D.chmod(0o755)
    try:
        print(f"installing {' '.join(packages)} (apt-get, services not started)...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env, check=True)
    finally:
        if ours:
            POLICY_RC_D.unlink()


def wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"peer exited ({proc.returncode}): {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SystemExit(f"peer not listening on 127.0.0.1:{port} after {timeout} s: {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the peer's master, then SIGKILL its whole process group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# ---------------------------------------------------------------------------------------------- Dovecot


@dataclass
class Dovecot:
    port: int
    directory: Path
    pid: int


DOVECOT_CONF = """\
# bench/peers.py: a private Dovecot on 127.0.0.1:{port} (implicit TLS), everything under {root}
instance_name = caducee-bench-{port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
info_log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
auth_mechanisms = plain login
auth_cache_size = {auth_cache_size}
auth_cache_ttl = 300 s
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
mail_location = maildir:~/Maildir
first_valid_uid = 1
mail_max_userip_connections = 1000
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
"""


@contextlib.contextmanager
def private_dovecot(
    users: dict[str, str],
    cert: str,
    key: str,
    plain_passwords: dict[str, str] | None = None,
    cache: bool = False,
) -> Iterator[Dovecot]:
    """Dovecot 2.3 (Debian's ``dovecot-imapd``) with ``users`` (address → argon2id hash, as Caducée
    stores it) in a passwd-file, or ``plain_passwords`` in clear text, Maildir under a temporary
    directory. ``cache`` turns Dovecot's ``auth_cache`` on (off by default, as Debian ships it)."""
    ensure_packages("dovecot", ["dovecot-imapd"])
    if os.geteuid() != 0:
        raise SystemExit(
            "the private Dovecot's master runs as root (its logins as dovenull, mail as dovecot)"
        )
    account = pwd.getpwnam("dovecot")
    root = Path(tempfile.mkdtemp(prefix="caducee-dovecot-"))
    root.chmod(0o711)  # mail processes (uid dovecot) traverse it to their home
    try:
        (root / "mail").mkdir()
        os.chown(root / "mail", account.pw_uid, account.pw_gid)
        lines = []
        for address, hashed in users.items():
            secret = f"{{PLAIN}}{plain_passwords[address]}" if plain_passwords else f"{{ARGON2ID}}{hashed}"
            lines.append(f"{address}:{secret}::::::")
        (root / "passwd").write_text("\n".join(lines) + "\n")
        (root / "passwd").chmod(0o600)
        os.chown(root / "passwd", account.pw_uid, account.pw_gid)  # the auth process runs as dovecot
        port = free_port()
        conf = root / "dovecot.conf"
        conf.write_text(
            DOVECOT_CONF.format(
                port=port,
                root=root,
                cert=cert,
                key=key,
                uid=account.pw_uid,
                gid=account.pw_gid,
                auth_cache_size="10M" if cache else "0",
            )
        )
        log = root / "dovecot.log"
        log.touch()
        proc = subprocess.Popen(
            ["dovecot", "-F", "-c", str(conf)], start_new_session=True, stdin=subprocess.DEVNULL
        )
        try:
            wait_port(port, proc, log)
            yield Dovecot(port, root, proc.pid)
        finally:
            stop(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- Postfix


@dataclass
class Postfix:
    port: int
    directory: Path
    maildir_base: Path

    def delivered(self) -> int:
        """Messages delivered into the Maildirs so far (``new/`` files)."""
        return sum(1 for p in self.maildir_base.rglob("new/*") if p.is_file())


POSTFIX_MAIN = """\
# bench/peers.py: a private Postfix receiving on 127.0.0.1:{port} over mutual TLS into virtual Maildirs
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
myhostname = mx.postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
relayhost = [127.0.0.1]:9
default_transport = error:this bench instance sends nothing out
biff = no
append_dot_mydomain = no
smtpd_banner = $myhostname ESMTP
message_size_limit = 26214400
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {root}/mail
virtual_mailbox_maps = texthash:{root}/vmailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
smtpd_relay_restrictions = reject_unauth_destination
smtpd_tls_security_level = encrypt
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_CAfile = {ca}
smtpd_tls_ask_ccert = yes
smtpd_tls_req_ccert = yes
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_loglevel = 0
"""

POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@contextlib.contextmanager
def private_postfix(cert: str, key: str, ca: str, recipients: list[str]) -> Iterator[Postfix]:
    """Postfix (Debian's package) from a configuration in a temporary directory: ``postfix -c DIR
    start-fg``, smtpd on a free port of 127.0.0.1 requiring a client certificate that chains to ``ca``,
    ``recipients`` delivered by virtual(8) into Maildirs. Postfix's master must start as root (it drops
    to ``mail_owner`` for every daemon); it binds 127.0.0.1 only."""
    ensure_packages("postfix", ["postfix"], "postfix postfix/main_mailer_type select No configuration\n")
    if os.geteuid() != 0:
        raise SystemExit("Postfix's master runs only as root (its daemons then run as mail_owner)")
    account = pwd.getpwnam("postfix")
    root = Path(tempfile.mkdtemp(prefix="caducee-postfix-"))
    root.chmod(0o755)
    try:
        for sub in ("queue", "data", "mail"):
            (root / sub).mkdir()
        for sub in ("data", "mail"):
            os.chown(root / sub, account.pw_uid, account.pw_gid)
        domains = sorted({r.split("@")[1] for r in recipients})
        (root / "vmailbox").write_text(
            "".join(f"{r} {r.split('@')[1]}/{r.split('@')[0]}/\n" for r in recipients)
        )
        port = free_port()
        values = {"port": port, "root": root, "cert": cert, "key": key, "ca": ca}
        values |= {"domain": " ".join(domains), "uid": account.pw_uid, "gid": account.pw_gid}
        (root / "main.cf").write_text(POSTFIX_MAIN.format(**values))
        (root / "master.cf").write_text(POSTFIX_MASTER.format(**values))
        log = root / "postfix.log"
        log.touch()
        check = subprocess.run(["postfix", "-c", str(root), "check"], capture_output=True, text=True)
        if check.returncode:
            raise SystemExit(f"postfix check: {check.stderr or log.read_text()}")
        proc = subprocess.Popen(
            ["postfix", "-c", str(root), "start-fg"],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # its log is maillog_file; the check's warnings about a
        )  # queue_directory outside /var/spool/postfix are expected
        try:
            wait_port(port, proc, log)
            yield Postfix(port, root, root / "mail")
        finally:
            subprocess.run(["postfix", "-c", str(root), "stop"], capture_output=True)
            stop(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
