"""Caducée settings: one TOML file, every key typed, defaulted and validated at start-up.

Why a hand-written schema rather than a library: every error must be one line that names the key and
the file (``caducee.toml: [limits] message_size: expected a size like "25MiB", got "big"``), the
operator reads it at 3 a.m., and the whole schema stays readable in one screen per section.
Relative paths are resolved against the directory holding the file, so a data directory can be moved.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

ENV_VAR = "CADUCEE_CONFIG"
FOLDER_NAME_COLUMN = 1000  # folder.name is String(1000): no longer name can be stored
MIN_FOLDERS = 6  # a new mailbox's INBOX, Sent, Drafts, Trash, Junk and Archive


class ConfigError(Exception):
    """A configuration problem, already phrased as the one line the operator will read."""


_PRIVATE_SYSTEM = {f.lower(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Draft")}
_KEYWORD = re.compile(r'[^\x00-\x20\x7f(){%*"\\\]]+')  # RFC 9051 atom: a keyword


def _private_flags(flags: list[str], name: str) -> list[str]:
    """``[imap] private_flags``: system flags in their canonical case; keywords as RFC 9051 atoms;
    never \\Deleted (EXPUNGE removes a message for everyone, so its flag is everyone's) nor \\Recent."""
    out: list[str] = []
    for flag in flags:
        if not isinstance(flag, str):
            raise ConfigError(f"{name}: [imap] private_flags: expected flag names, got {flag!r}")
        canonical = _PRIVATE_SYSTEM.get(flag.lower())
        if canonical is None and (flag.startswith("\\") or not _KEYWORD.fullmatch(flag)):
            raise ConfigError(
                f"{name}: [imap] private_flags: {flag!r} cannot be private (\\Seen, \\Answered,"
                " \\Flagged, \\Draft or a keyword)"
            )
        out.append(canonical or flag)
    return list(dict.fromkeys(out))


Size = Annotated[int, "size"]
"""A byte count written as ``25MiB``, ``512KiB``, ``10MB`` or a plain integer."""

Duration = Annotated[float, "duration"]
"""Seconds written as ``30s``, ``30m``, ``12h``, ``5d`` or a plain number."""

Retention = Annotated[float, "retention"]
"""Seconds written as ``12 months``, ``1 year``, ``400d``: how long records are kept."""

MONTH = 31 * 86400  # a retention rounds months up: "6 months" is never less than six calendar months
MIN_AUDIT_KEEP = 6 * MONTH  # the ANS recommendation for traces

FilePath = Annotated[str, "path"]
"""A filesystem path, resolved against the configuration file's directory."""


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(value: Any) -> int:
    """Parse ``25MiB`` (binary and decimal units, case-insensitive) into bytes."""
    if isinstance(value, bool):
        raise ValueError('expected a size like "25MiB"')
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f'expected a size like "25MiB", got {value!r}')


def parse_duration(value: Any) -> float:
    """Parse ``30m`` / ``12h`` / ``5d`` / a number of seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration like "30m"')
    if isinstance(value, int | float) and value >= 0:
        return float(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f'expected a duration like "30m", got {value!r}')


def parse_retention(value: Any) -> float:
    """Parse ``12 months`` / ``1 year`` / a duration (``400d``) into seconds."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*(months?|years?)\s*", value)
        if m:
            return int(m.group(1)) * (MONTH if m.group(2).startswith("month") else 365 * 86400)
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(f'expected a period like "12 months", got {value!r}') from None


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``127.0.0.1:2525`` or ``[::1]:2525`` into host and port."""
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", value)
    if not m:
        raise ValueError(f'expected "host:port", got {value!r}')
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    return host, port


def is_loopback(host: str) -> bool:
    """``localhost`` or an address of 127.0.0.0/8 or ::1 (an empty host or 0.0.0.0 is every interface)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerSettings:
    hostname: str = "localhost"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace: Duration = 10
    # Processes accepting on the same listening sockets (bound once by the supervisor), so that every
    # core works; more than one needs PostgreSQL (see mailserver/workers.py).
    workers: int = 1


@dataclass
class DatabaseSettings:
    url: str = "sqlite+aiosqlite:///caducee.db"
    pool_size: int = 10
    echo: bool = False


@dataclass
class StorageSettings:
    path: FilePath = "store"
    # Messages up to this size are kept in their database row, made durable by the same commit as
    # the rest of the delivery; larger ones are files under ``path`` (0: always files).
    inline_max: Size = 64 * 1024


@dataclass
class TLSSettings:
    cert: FilePath = "tls/chain.pem"
    key: FilePath = "tls/key.pem"
    peer_ca: FilePath = "tls/peer-ca.pem"
    min_version: Literal["1.2", "1.3"] = "1.2"
    # Revocation of peer and client certificates (mailserver/revocation.py), every certificate of the
    # chain below the root: CRL files (PEM or DER, re-read when changed), the CRL distribution points
    # of the certificates fetched over http (cached ``crl_fetch_retry``), and optionally OCSP.
    crl: list[FilePath] = field(default_factory=list)
    crl_fetch: bool = False
    crl_fetch_timeout: Duration = 5
    crl_max_size: Size = 10 * 1024 * 1024
    crl_fetch_retry: Duration = 3600
    # Distribution points and OCSP answers kept at once (the oldest are dropped first).
    crl_cache_entries: int = 1000
    # When a certificate names a distribution point or responder and none answered: accept the peer
    # (logged and counted) or refuse it temporarily (451, it retries).
    crl_unreachable: Literal["accept", "refuse"] = "accept"
    ocsp: bool = False


@dataclass
class SMTPSettings:
    """The MTA that talks to the trust space (peer operators, mutual TLS)."""

    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2525"])
    require_client_cert: bool = True


@dataclass
class SubmissionSettings:
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2587"])
    tls_listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2465"])
    # "optional": the TLS handshake asks for a client certificate (chaining to tls.peer_ca) that
    # SASL EXTERNAL can then use to log an applicative mailbox in (mailserver/certauth.py).
    client_cert: Literal["none", "optional"] = "none"
    # Keep a copy of each submitted message in the sender's \Sent folder (and, for a member sending as
    # an ORG/CAB mailbox, in that mailbox's too); a copy the client APPENDs within ``sent_window``
    # with the same Message-ID is not stored twice (mailserver/sent.py).
    save_sent: bool = False
    sent_window: Duration = 600


@dataclass
class IMAPSettings:
    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2143"])
    tls_listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2993"])
    client_cert: Literal["none", "optional"] = "none"
    shared_prefix: str = "Partagé/"  # RFC 2342 shared namespace: the ORG/CAB mailboxes one is a member of
    # Flags each member of a shared mailbox keeps for themselves (Dovecot's private flags); the others
    # (\Deleted always) are shared by every member. [] shares \Seen too.
    private_flags: list[str] = field(default_factory=lambda: ["\\Seen"])


@dataclass
class PortalSettings:
    """The patient portal. ``second_factor`` after INS + password (mailserver/portal/factors.py):
    ``email_or_totp`` (the default: health data) takes the patient's authenticator app when they
    enrolled one, else a code e-mailed to their personal address through ``[relay]``; ``email`` and
    ``totp`` take only that one (``totp``: a patient without an app signs in once by e-mailed code
    and must enrol before anything else); ``off`` only for a first local try. A code has 6 digits,
    lives ``code_lifetime`` and allows ``code_tries`` tries, then it is void and the account
    locked for ``[auth] lockout``; at most one code e-mail per patient per ``code_interval``. A device
    the patient trusts skips the second factor for ``trust_device`` days (0: never)."""

    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:8080"])
    secure_cookies: bool = True
    session_lifetime: Duration = 1800
    second_factor: Literal["off", "email", "totp", "email_or_totp"] = "email_or_totp"
    code_lifetime: Duration = 600
    code_tries: int = 5
    code_interval: Duration = 60
    trust_device: int = 30
    # "Nouveau message": at most this many mailboxes a patient may write first listed (then: search).
    first_contacts_max: int = 50


@dataclass
class APISettings:
    """The sending API (``/api/v1/``) on the portal listener: per-mailbox rate and message limits.

    ``listen_tls``: listeners serving the same application over TLS (``[tls] cert``/``key``) that ask
    for a client certificate chaining to ``tls.peer_ca``: software logs its APP mailbox in with it."""

    listen_tls: list[str] = field(default_factory=list)
    messages_per_minute: int = 60
    max_recipients: int = 100
    max_body_size: Size = 25 * 1024**2


@dataclass
class LargeFilesSettings:
    """Attachments kept by the operator and sent as a download link (mailserver/large_files.py): any
    above ``threshold`` (API, submission), up to ``max_size`` (API uploads), each link valid for
    ``keep``; an upload left unfinished is dropped after ``upload_expire``; a mailbox holds at most
    ``max_uploads`` files not yet sent. Files live under ``path``."""

    threshold: Size = 10 * 1024**2
    max_size: Size = 2 * 1024**3
    keep: Duration = 30 * 86400
    upload_expire: Duration = 86400
    max_uploads: int = 100
    path: FilePath = "large_files"


@dataclass
class XDMSettings:
    """IHE XDM archives (``IHE_XDM.zip``) arriving in mail: checked before anything is unpacked."""

    max_entries: int = 100
    max_uncompressed: Size = 50 * 1024**2  # total of the entries' uncompressed sizes
    max_ratio: int = 100  # an entry's uncompressed size over its compressed size


@dataclass
class AdminSettings:
    """The operator's HTTP listener: ``/healthz``, ``/readyz``, ``/metrics`` (mailserver/admin.py).

    Loopback only unless ``allow_remote`` says otherwise: the metrics name services and counts that
    are nobody else's business, and the listener has no authentication of its own."""

    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:9180"])
    allow_remote: bool = False
    timeout: Duration = 5  # each readiness probe (database query, store write) and the queue's scrape query


@dataclass
class LDAPSettings:
    listen: list[str] = field(default_factory=list)
    tls_listen: list[str] = field(default_factory=list)
    base_dn: str = "ou=annuaire,dc=caducee"
    size_limit: int = 200
    time_limit: Duration = 10


@dataclass
class LimitsSettings:
    """Every protective limit in one place; each one is also enforced by a test."""

    message_size: Size = 25 * 1024**2
    # Connections of one protocol in one process, see mailserver/limits.py: all of them, from one
    # client address (a hospital's NAT: a ceiling against floods), of one user from one address
    # (Dovecot's mail_max_userip_connections) and of one user from all addresses.
    max_connections: int = 2000
    connections_per_ip: int = 1000
    connections_per_user_ip: int = 10
    connections_per_user: int = 50
    smtp_line_length: Size = 4096
    # RFC 4954 §4: an AUTH line (and a SASL response) may be 12,288 octets; bearer tokens need it.
    smtp_auth_line_length: Size = 12288
    imap_line_length: Size = 64 * 1024
    literal_size: Size = 25 * 1024**2
    recipients_per_message: int = 100
    smtp_idle_timeout: Duration = 300
    imap_idle_timeout: Duration = 1800
    imap_command_timeout: Duration = 1800
    imap_update_contexts: int = 8
    # Folders, however they are made (IMAP CREATE/RENAME, the default folders), and subscriptions.
    # 255 octets of UTF-8 for a full name (Dovecot's limit for one hierarchy level, and room for 16
    # levels of ordinary names); 16 levels (Dovecot's hierarchy limit); 1000 folders and as many
    # subscribed names per mailbox: a LIST of all of them is about 50 KiB and a few milliseconds,
    # far more than a practice's folder tree, and it bounds every per-folder loop on the event loop.
    folder_name_length: Size = 255
    folder_depth: int = 16
    folders_per_mailbox: int = 1000
    ldap_idle_timeout: Duration = 600
    portal_idle_timeout: Duration = 75  # HTTP keep-alive, and a connection that sends no request


@dataclass
class AuthSettings:
    """Password hashing cost and lock-out. argon2id costs measured in README (login path, off-loop)."""

    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    argon2_parallelism: int = 1
    max_failures: int = 5
    failure_window: Duration = 900
    lockout: Duration = 900
    # Failures from one address, whatever the accounts: a hospital's clinicians all come from one NAT
    # address, so this bounds password spraying without locking a site out for a morning of typos;
    # each account keeps its own max_failures.
    max_failures_per_ip: int = 100
    # Logins verified at once per process; the others queue before taking a place in the lock-out
    # counters (mailserver/auth.py). Each argon2 verification takes one core and argon2_memory_kib.
    concurrent_verifications: int = 4
    # CRLs (PEM or DER) of the health PKI checked for client certificates (SASL EXTERNAL).
    client_crl: list[FilePath] = field(default_factory=list)
    # Verified-credential cache (mailserver/credential_cache.py): seconds a password argon2 accepted
    # is accepted again without argon2 (0 disables), and how many such entries a process keeps.
    credential_cache_ttl: Duration = 300
    credential_cache_size: int = 10_000  # ~0.8 KiB each (measured): ~8 MiB at most


# Asymmetric JWS algorithms only (RFC 7518 §3.1): an HMAC algorithm would let anyone holding the
# issuer's *public* key sign tokens (key confusion), and "none" signs nothing.
TokenAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]


@dataclass
class OAuthSettings:
    """Bearer tokens of an OpenID provider (Pro Santé Connect), see mailserver/oauth.py. Off while
    ``issuer`` is empty; then exactly one key source: ``jwks_url``, ``jwks_file`` or the RFC 7662
    ``introspection_url``."""

    issuer: str = ""
    audience: str = ""
    # Pro Santé Connect puts the national identifier (8 + RPPS) in preferred_username.
    identity_claim: str = "preferred_username"
    algorithms: list[TokenAlgorithm] = field(default_factory=lambda: ["RS256", "PS256", "ES256"])
    clock_skew: Duration = 60
    jwks_url: str = ""
    jwks_file: FilePath = ""
    jwks_cache: Duration = 3600  # keys are fetched again after this long
    jwks_refresh_interval: Duration = 30  # least time between two fetches for an unknown key id
    timeout: Duration = 5  # for each request to the provider
    introspection_url: str = ""
    client_id: str = ""
    client_secret_file: FilePath = ""
    scope: str = "openid"  # named in the RFC 7628 error challenge
    token_size: Size = 16 * 1024

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)


@dataclass
class DeliverySettings:
    """Outbound queue to peer operators."""

    routes: dict[str, str] = field(default_factory=dict)
    retry_schedule: list[Duration] = field(default_factory=lambda: [60.0, 300.0, 900.0, 3600.0, 14400.0])
    expire: Duration = 5 * 86400
    workers: int = 4
    connect_timeout: Duration = 30  # the TCP connection to a peer, and each DNS query
    # RFC 5321 §4.5.3.2, each the wait for one reply of the peer (or for writing one block to it):
    greeting_timeout: Duration = 300  # the 220 greeting; also EHLO, STARTTLS, RSET and QUIT
    mail_timeout: Duration = 300
    rcpt_timeout: Duration = 300
    data_init_timeout: Duration = 120  # DATA's 354
    data_block_timeout: Duration = 180  # each block of the message to be taken by the peer
    data_final_timeout: Duration = 600  # the reply to the final ".": the peer may be storing the message
    dns_nameservers: list[str] = field(default_factory=list)
    # A recipient still queued this long after acceptance gets one DELAY DSN (RFC 3461); 0: never.
    delay_warning: Duration = 4 * 3600


@dataclass
class QueueSettings:
    """How a queue worker holds the rows it is delivering (on any node)."""

    # A worker's claim on a batch, renewed every third of it while the delivery runs: a node that dies
    # mid-delivery (kill -9, power loss) gives its rows to the other workers once this has passed.
    lease: Duration = 60


@dataclass
class TrustSettings:
    """The trust list: a local file re-read every ``refresh`` when it changed, and/or the published
    list downloaded over HTTPS from ``url`` every ``refresh_interval`` (mailserver/trust_download.py)."""

    list: FilePath = ""
    refresh: Duration = 3600
    url: str = ""  # https:// only; off while empty
    ca_file: FilePath = ""  # CA bundle the server's certificate must chain to (empty: the system's)
    refresh_interval: Duration = 6 * 3600
    timeout: Duration = 30  # the whole download
    max_size: Size = 20 * 1024**2
    # A new list removing more than this percentage of the current domains is refused (a truncated or
    # wrong file must not cut peers off); ``caducee trust refresh --force`` installs it anyway.
    max_removed: int = 10


@dataclass
class SMIMESettings:
    sign: Literal["always", "if-certificate", "never"] = "if-certificate"
    encrypt: Literal["never", "if-certificate", "required"] = "never"
    verify: bool = True
    ca: FilePath = ""
    crl: list[FilePath] = field(default_factory=list)
    key_file: FilePath = "smime.key"


@dataclass
class QuotaSettings:
    default_storage: Size = 1024**3
    default_messages: int = 0
    warn_percent: list[int] = field(default_factory=lambda: [80, 95])


@dataclass
class AuditSettings:
    """The audit trail: kept ``keep`` (at least 6 months), older events purged daily."""

    keep: Retention = 12 * MONTH


@dataclass
class MailboxesSettings:
    """The life cycle (CNIL rule for MSSanté): a mailbox without any login for ``inactive_after`` gets a
    notice, and is disabled ``grace_period`` later unless someone logs in meanwhile."""

    inactive_after: Retention = 12 * MONTH
    grace_period: Duration = 30 * 86400


@dataclass
class ClientsSettings:
    """What mail clients are told (DNS SRV records, autoconfig, Autodiscover): the public host names,
    and the public ports when they differ from the listeners' (a NAT or a load balancer in front);
    empty or 0 means the server's host name and the first listener's port."""

    hostname: str = ""
    mx_hostname: str = ""
    imap_port: int = 0
    imaps_port: int = 0
    submission_port: int = 0
    submissions_port: int = 0


@dataclass
class PatientsSettings:
    """New-message alerts at a patient's personal address (mailserver/alerts.py): the portal's address
    they point to, at most one per ``alert_interval``, sent as ``alert_from`` (empty: no-reply@hostname)."""

    portal_url: str = ""
    alert_interval: Duration = 900
    alert_from: str = ""


@dataclass
class RelaySettings:
    """The operator's ordinary mail relay, for alerts only (patients' addresses are outside the trust
    space): no ``host``, no alerts."""

    host: str = ""
    port: int = 587
    starttls: bool = True
    username: str = ""
    password_file: FilePath = ""
    ca_file: FilePath = ""  # CA bundle the relay's certificate must chain to (empty: the system's)


@dataclass
class Settings:
    """The whole configuration; ``source`` is the file it came from (for messages), or None."""

    server: ServerSettings = field(default_factory=ServerSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    smtp: SMTPSettings = field(default_factory=SMTPSettings)
    submission: SubmissionSettings = field(default_factory=SubmissionSettings)
    imap: IMAPSettings = field(default_factory=IMAPSettings)
    portal: PortalSettings = field(default_factory=PortalSettings)
    api: APISettings = field(default_factory=APISettings)
    xdm: XDMSettings = field(default_factory=XDMSettings)
    large_files: LargeFilesSettings = field(default_factory=LargeFilesSettings)
    ldap: LDAPSettings = field(default_factory=LDAPSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    oauth: OAuthSettings = field(default_factory=OAuthSettings)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    trust: TrustSettings = field(default_factory=TrustSettings)
    smime: SMIMESettings = field(default_factory=SMIMESettings)
    quota: QuotaSettings = field(default_factory=QuotaSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    mailboxes: MailboxesSettings = field(default_factory=MailboxesSettings)
    clients: ClientsSettings = field(default_factory=ClientsSettings)
    patients: PatientsSettings = field(default_factory=PatientsSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    source: Path | None = None


def _convert(value: Any, annotation: Any, base: Path) -> Any:
    """Check and convert one TOML value to the annotated type; raise ValueError with the reason."""
    origin = get_origin(annotation)
    if annotation == Size:
        return parse_size(value)
    if annotation == Duration:
        return parse_duration(value)
    if annotation == Retention:
        return parse_retention(value)
    if annotation == FilePath:
        if not isinstance(value, str):
            raise ValueError(f"expected a path string, got {value!r}")
        if not value:
            return ""
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else (base / p))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected a non-negative integer, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is list:
        (item,) = get_args(annotation)
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {value!r}")
        return [_convert(v, item, base) for v in value]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ValueError(f"expected a table of strings, got {value!r}")
        return {str(k).lower(): v for k, v in value.items()}
    raise ValueError(f"unsupported setting type {annotation!r}")  # a schema bug, not user input


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def from_dict(data: dict[str, Any], source: Path | None = None) -> Settings:
    """Build validated settings from parsed TOML; every problem raises ConfigError naming the key."""
    name = str(source) if source else "<settings>"
    base = source.parent if source else Path.cwd()
    settings = Settings(source=source)
    top = _section_types(Settings)
    for section, values in data.items():
        if section == "source" or section not in top:
            raise ConfigError(f"{name}: unknown section [{section}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{name}: [{section}] must be a table")
        cls = top[section]
        hints = _section_types(cls)
        current = getattr(settings, section)
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{name}: [{section}] unknown key {key!r}")
            try:
                setattr(current, key, _convert(value, hints[key], base))
            except ValueError as exc:
                raise ConfigError(f"{name}: [{section}] {key}: {exc}") from None
    # Default relative paths are relative to the configuration file too.
    for section in top:
        if section == "source":
            continue
        obj = getattr(settings, section)
        for f in dataclasses.fields(obj):
            if _section_types(type(obj))[f.name] == FilePath and f.name not in data.get(section, {}):
                setattr(obj, f.name, _convert(getattr(obj, f.name), FilePath, base))
    _check(settings, name)
    return settings


def _check_workers(settings: Settings, name: str) -> None:
    """Several worker processes share one database only through PostgreSQL."""
    workers = settings.server.workers
    if workers < 1:
        raise ConfigError(f"{name}: [server] workers: must be at least 1")
    if workers > 1 and not settings.database.url.startswith("postgresql+asyncpg://"):
        raise ConfigError(
            f"{name}: [server] workers = {workers} needs PostgreSQL ([database] url ="
            " postgresql+asyncpg://…): on SQLite, writes are grouped and IMAP IDLE is notified within"
            " one process only; use workers = 1"
        )


_AT_LEAST_ONE = (
    ("limits", "max_connections"),
    ("limits", "connections_per_ip"),
    ("limits", "connections_per_user_ip"),
    ("limits", "connections_per_user"),
    ("auth", "max_failures"),
    ("auth", "max_failures_per_ip"),
    ("auth", "concurrent_verifications"),
)


DELIVERY_TIMEOUTS = (
    "connect_timeout",
    "greeting_timeout",
    "mail_timeout",
    "rcpt_timeout",
    "data_init_timeout",
    "data_block_timeout",
    "data_final_timeout",
)


def _check(settings: Settings, name: str) -> None:
    """Cross-field checks that a type alone cannot express."""
    for section in ("smtp", "submission", "imap", "portal", "ldap", "admin", "api"):
        obj = getattr(settings, section)
        for key in ("listen", "tls_listen", "listen_tls"):
            for addr in getattr(obj, key, []):
                try:
                    parse_listen(addr)
                except ValueError as exc:
                    raise ConfigError(f"{name}: [{section}] {key}: {exc}") from None
    if not settings.admin.allow_remote:
        for addr in settings.admin.listen:
            if not is_loopback(parse_listen(addr)[0]):
                raise ConfigError(
                    f"{name}: [admin] listen: {addr} is not a loopback address"
                    " (set [admin] allow_remote = true to serve metrics beyond this host)"
                )
    if settings.admin.timeout <= 0:
        raise ConfigError(f"{name}: [admin] timeout: must be more than 0 seconds")
    if settings.relay.username and not settings.relay.password_file:
        raise ConfigError(f"{name}: [relay] username needs password_file (the relay's AUTH password)")
    if not 0 < settings.relay.port <= 65535:
        raise ConfigError(f"{name}: [relay] port: out of range")
    for domain, route in settings.delivery.routes.items():
        try:
            parse_listen(route)
        except ValueError as exc:
            raise ConfigError(f"{name}: [delivery] routes.{domain}: {exc}") from None
    url = settings.database.url
    if not (url.startswith("sqlite+aiosqlite://") or url.startswith("postgresql+asyncpg://")):
        raise ConfigError(
            f"{name}: [database] url: expected sqlite+aiosqlite:///PATH"
            f" or postgresql+asyncpg://…, got {url!r}"
        )
    _check_workers(settings, name)
    limits = settings.limits
    if limits.imap_update_contexts < 1:  # RFC 5267 §4.3.1: at least one per client
        raise ConfigError(f"{name}: [limits] imap_update_contexts: must be at least 1")
    if not 1 <= limits.folder_name_length <= FOLDER_NAME_COLUMN:
        raise ConfigError(f"{name}: [limits] folder_name_length: must be between 1 and {FOLDER_NAME_COLUMN}")
    if limits.folder_depth < 1:
        raise ConfigError(f"{name}: [limits] folder_depth: must be at least 1")
    if limits.folders_per_mailbox < MIN_FOLDERS:
        raise ConfigError(f"{name}: [limits] folders_per_mailbox: must be at least {MIN_FOLDERS}")
    for section, key in _AT_LEAST_ONE:
        if getattr(getattr(settings, section), key) < 1:
            raise ConfigError(f"{name}: [{section}] {key}: must be at least 1 (0 would refuse everyone)")
    if settings.portal.first_contacts_max < 1:
        raise ConfigError(f"{name}: [portal] first_contacts_max: must be at least 1")
    for key in ("ldap_idle_timeout", "portal_idle_timeout"):
        if getattr(settings.limits, key) <= 0:
            raise ConfigError(f"{name}: [limits] {key}: must be more than 0 seconds")
    for key in DELIVERY_TIMEOUTS:
        if getattr(settings.delivery, key) <= 0:
            raise ConfigError(f"{name}: [delivery] {key}: must be more than 0 seconds")
    large = settings.large_files
    if large.threshold < 1 or large.max_size < large.threshold:
        raise ConfigError(f"{name}: [large_files] max_size: must be at least threshold (and threshold > 0)")
    if large.keep <= 0 or large.upload_expire <= 0:
        raise ConfigError(f"{name}: [large_files] keep and upload_expire: must be more than 0 seconds")
    if settings.queue.lease < 1:
        raise ConfigError(f"{name}: [queue] lease: must be at least 1 second")
    portal = settings.portal
    if portal.code_tries < 1 or portal.code_lifetime <= 0:
        raise ConfigError(f"{name}: [portal] code_tries and code_lifetime: must be more than 0")
    if portal.trust_device < 0:
        raise ConfigError(f"{name}: [portal] trust_device: a number of days, 0 or more")
    _check_oauth(settings.oauth, name)
    if settings.audit.keep < MIN_AUDIT_KEEP:
        raise ConfigError(
            f"{name}: [audit] keep: must be at least 6 months ({MIN_AUDIT_KEEP // 86400} days), the ANS"
            " recommendation for traces"
        )
    for key in ("imap_port", "imaps_port", "submission_port", "submissions_port"):
        if getattr(settings.clients, key) > 65535:
            raise ConfigError(f"{name}: [clients] {key}: must be a port number (0 for the listener's)")
    if settings.mailboxes.inactive_after < MONTH:
        raise ConfigError(f"{name}: [mailboxes] inactive_after: must be at least 1 month")
    _check_trust(settings.trust, name)
    for key in ("crl_fetch_timeout", "crl_fetch_retry"):
        if getattr(settings.tls, key) <= 0:
            raise ConfigError(f"{name}: [tls] {key}: must be more than 0 seconds")
    if settings.tls.crl_cache_entries < 1:
        raise ConfigError(f"{name}: [tls] crl_cache_entries: must be at least 1")
    settings.imap.private_flags = _private_flags(settings.imap.private_flags, name)
    if not all(0 < p < 100 for p in settings.quota.warn_percent):
        raise ConfigError(f"{name}: [quota] warn_percent: each value must be between 1 and 99")


def _check_trust(t: TrustSettings, name: str) -> None:
    if t.url and not re.match(r"https://[^/\s]+", t.url):
        raise ConfigError(f"{name}: [trust] url: expected an https:// URL, got {t.url!r}")
    if t.max_removed > 100:
        raise ConfigError(f"{name}: [trust] max_removed: a percentage, at most 100")
    for key in ("timeout", "refresh_interval"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"{name}: [trust] {key}: must be more than 0 seconds")


def _check_oauth(oauth: OAuthSettings, name: str) -> None:
    sources = [k for k in ("jwks_url", "jwks_file", "introspection_url") if getattr(oauth, k)]
    if not oauth.issuer:
        if sources:
            raise ConfigError(f"{name}: [oauth] issuer: required with {sources[0]}")
        return
    if len(sources) != 1:
        raise ConfigError(
            f"{name}: [oauth] exactly one of jwks_url, jwks_file, introspection_url is needed"
            f" (got {', '.join(sources) or 'none'})"
        )
    for key in ("issuer", "jwks_url", "introspection_url"):
        url = getattr(oauth, key)
        if url and not re.match(r"https?://[^/\s]+", url):
            raise ConfigError(f"{name}: [oauth] {key}: expected an http(s) URL, got {url!r}")
    if not oauth.audience and not oauth.introspection_url:
        raise ConfigError(f"{name}: [oauth] audience: required to validate tokens (the client id)")
    if not oauth.algorithms:
        raise ConfigError(f"{name}: [oauth] algorithms: at least one is needed")
    if not oauth.identity_claim:
        raise ConfigError(f"{name}: [oauth] identity_claim: must name a claim")
    if oauth.timeout <= 0:
        raise ConfigError(f"{name}: [oauth] timeout: must be more than 0 seconds")


def load(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load the file named, else ``$CADUCEE_CONFIG``; a missing or malformed file is a ConfigError."""
    chosen = path or os.environ.get(ENV_VAR)
    if not chosen:
        raise ConfigError(f"no configuration file: pass --config FILE or set {ENV_VAR}")
    p = Path(chosen).expanduser().resolve()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration file: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    settings = from_dict(data, p)
    url = settings.database.url
    if url.startswith("sqlite+aiosqlite:///") and not url.startswith("sqlite+aiosqlite:////"):
        rel = url.removeprefix("sqlite+aiosqlite:///")
        if rel and rel != ":memory:":
            settings.database.url = "sqlite+aiosqlite:///" + str(p.parent / rel)
    return settings
