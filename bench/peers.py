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
    account = pwd.getpwnam("dovecot") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
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
        proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], start_new_session=True)
        try:
            wait_port(port, proc, log)
            yield Dovecot(port, root, proc.pid)
        finally:
            stop(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
