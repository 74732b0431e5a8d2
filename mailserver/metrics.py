"""Prometheus metrics, one registry per runtime, fed by small calls from every protocol (never copied).

Each :class:`Metrics` owns a ``CollectorRegistry`` (not prometheus_client's global one), so several
servers in one process (the tests) keep their own counts. The protocols call the methods below where
the thing happens: the connection gate (``connection_*``), the SMTP command loop and the IMAP dispatcher
(``command``, ``reply``), the one login path (``login``), the TLS handshake report, ``Delivery.commit``
and the queue's ``record`` (deliveries and attempts), ``Audit.record``, the database and the store.
The queue's depth and oldest age are read from the database when ``/metrics`` is scraped
(``mailserver.admin``). Label values come from fixed sets (service names, command verbs the server
knows, code classes), never from client input, so the number of series stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# The classic text format ``generate_latest`` writes, which every Prometheus version reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a cached SQLite read is ~0.1 ms, an fsync'ed commit a few ms, a slow disk or network 1 s.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def code_class(reply: str) -> str:
    """``250 ok`` → ``2xx``; an IMAP status (``OK``, ``NO``, ``BAD``) is its own class."""
    head = reply[:1]
    return f"{head}xx" if head.isdigit() else reply.split(" ", 1)[0].upper()


class Metrics:
    """Every metric of one runtime (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.connections = Gauge(
            "caducee_connections_open", "Connections open now, by service", ["service"], registry=r
        )
        self.connections_total = Counter(
            "caducee_connections", "Connections admitted, by service", ["service"], registry=r
        )
        self.connections_refused = Counter(
            "caducee_connections_refused",
            "Connections or logins refused by a [limits] ceiling",
            ["service", "limit"],
            registry=r,
        )
        self.commands = Counter(
            "caducee_commands", "Protocol commands received", ["service", "command"], registry=r
        )
        self.replies = Counter(
            "caducee_replies",
            "Replies sent: SMTP by code class (2xx..5xx), IMAP tagged completions by status",
            ["service", "code"],
            registry=r,
        )
        self.patient_alerts = Counter(
            "caducee_patient_alerts",
            "New-message alerts to patients' personal addresses: queued, throttled, disabled, no_relay",
            ["result"],
            registry=r,
        )
        self.deliveries = Counter(
            "caducee_deliveries",
            "Messages delivered to a recipient: local (a mailbox here) or remote (taken by a peer)",
            ["destination"],
            registry=r,
        )
        self.delivery_attempts = Counter(
            "caducee_delivery_attempts",
            "Outbound delivery attempts per recipient, by result (sent, relayed, temporary, permanent)",
            ["result"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "caducee_queue_depth", "Outbound recipients waiting for delivery (read at scrape)", registry=r
        )
        self.queue_oldest = Gauge(
            "caducee_queue_oldest_age_seconds",
            "Age of the oldest message with a recipient waiting (0 when the queue is empty)",
            registry=r,
        )
        self.peer_revocation_checks = Counter(
            "caducee_peer_revocation_checks",
            "Revocation checks of peer and client certificate chains: good, revoked, unknown, error",
            ["result"],
            registry=r,
        )
        self.tls_failures = Counter(
            "caducee_tls_handshake_failures",
            "Failed TLS handshakes (STARTTLS or implicit)",
            ["service"],
            registry=r,
        )
        self.logins = Counter(
            "caducee_logins", "Login attempts by method and result", ["method", "result"], registry=r
        )
        self.audit_errors = Counter(
            "caducee_audit_write_errors", "Audit events that could not be written", registry=r
        )
        self.database_seconds = Histogram(
            "caducee_database_seconds",
            "Database transactions and probes, by kind",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_seconds = Histogram(
            "caducee_store_seconds",
            "Message store file operations (fsync'ed writes, reads, probes)",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.trust_refreshes = Counter(
            "caducee_trust_list_refreshes",
            "Trust list downloads by result (installed, unchanged, failed, refused)",
            ["result"],
            registry=r,
        )

    # ------------------------------------------------------------------ what the protocols call

    def connection_opened(self, service: str) -> None:
        self.connections.labels(service).inc()
        self.connections_total.labels(service).inc()

    def connection_closed(self, service: str) -> None:
        self.connections.labels(service).dec()

    def connection_refused(self, service: str, limit: str) -> None:
        self.connections_refused.labels(service, limit).inc()

    def command(self, service: str, command: str) -> None:
        self.commands.labels(service, command).inc()

    def reply(self, service: str, reply: str) -> None:
        self.replies.labels(service, code_class(reply)).inc()

    def delivered(self, destination: str, count: int = 1) -> None:
        if count:
            self.deliveries.labels(destination).inc(count)

    def patient_alert(self, result: str) -> None:
        self.patient_alerts.labels(result).inc()

    def delivery_attempt(self, result: str) -> None:
        self.delivery_attempts.labels(result).inc()

    def queue(self, depth: int, oldest_age: float) -> None:
        self.queue_depth.set(depth)
        self.queue_oldest.set(oldest_age)

    def tls_failure(self, service: str) -> None:
        self.tls_failures.labels(service).inc()

    def login(self, method: str, result: str) -> None:
        self.logins.labels(method, result).inc()

    def audit_error(self) -> None:
        self.audit_errors.inc()

    def database_latency(self, kind: str, seconds: float) -> None:
        self.database_seconds.labels(kind).observe(seconds)

    def store_latency(self, operation: str, seconds: float) -> None:
        self.store_seconds.labels(operation).observe(seconds)

    def trust_refresh(self, result: str) -> None:
        self.trust_refreshes.labels(result).inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


# For objects built outside a runtime (a test's lone gate, a CLI helper): counted, never scraped.
UNSCRAPED = Metrics()
