"""Prometheus metrics: every counter the services move, in one registry.

Components import the metric they move; `encimap.service.http` serves the registry on
`[metrics] listen` as /metrics. Labels are bounded sets (outcomes, kinds, database names),
never addresses or usernames.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

DELIVERIES = Counter(
    "encimap_deliveries",
    "Recipients handled by the intake, by outcome (stored, duplicate, passthrough, rejected, "
    "tempfail).",
    ["outcome"],
    registry=REGISTRY,
)
ENCRYPTION_SECONDS = Histogram(
    "encimap_encryption_seconds",
    "Time to build one S/MIME envelope.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
RECIPIENT_LOOKUPS = Counter(
    "encimap_recipient_lookups",
    "Intake RCPT lookups by source: cache (a recent lookup reused) or database.",
    ["source"],
    registry=REGISTRY,
)
AUTH_DECISIONS = Counter(
    "encimap_auth_decisions",
    "Login decisions by service, principal kind (or 'unknown') and result (ok, failed, tempfail).",
    ["service", "kind", "result"],
    registry=REGISTRY,
)
AUTH_CACHE = Counter(
    "encimap_auth_cache_lookups",
    "Auth cache lookups by result (hit, miss); hit ratio = hit / (hit + miss).",
    ["result"],
    registry=REGISTRY,
)
AUTH_THROTTLED = Counter(
    "encimap_auth_throttled",
    "Login attempts delayed or refused because of earlier failures from the client.",
    ["action"],
    registry=REGISTRY,
)
RELAYED = Counter(
    "encimap_relayed_messages",
    "Messages the submission service handed upstream, by result (ok, rejected, tempfail).",
    ["result"],
    registry=REGISTRY,
)
CONNECTIONS_REFUSED = Counter(
    "encimap_connections_refused",
    "Connections closed by the connection limits, per service and reason (connections, per-ip, "
    "unauthenticated, login-timeout).",
    ["service", "reason"],
    registry=REGISTRY,
)
IMAP_SESSIONS = Gauge(
    "encimap_imap_sessions", "IMAP sessions open now.", ["state"], registry=REGISTRY
)
IMAP_OUTPUT_PEAK = Gauge(
    "encimap_imap_output_peak_bytes",
    "Most response bytes one IMAP session has held in memory at once since start (queued "
    "in the session plus waiting in the transport); bounded whatever the response size.",
    registry=REGISTRY,
)
IMAP_SESSIONS_ENDED = Counter(
    "encimap_imap_sessions_ended",
    "IMAP sessions the server ended, by reason (login_timeout, idle, command_timeout, "
    "literal_too_large, revoked).",
    ["reason"],
    registry=REGISTRY,
)
IMAP_COMMAND_SECONDS = Histogram(
    "encimap_imap_command_seconds",
    "Time the server spent on IMAP commands, by command: from the command's first line to "
    "its tagged reply (literals and the updates reported with it included).",
    ["command"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
    registry=REGISTRY,
)
DB_QUERY_SECONDS = Histogram(
    "encimap_db_query_seconds",
    "Duration of queries through the service pools, per database.",
    ["database"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
    registry=REGISTRY,
)
DB_RECONNECTS = Counter(
    "encimap_db_reconnects_total",
    "Pooled connections dropped so that the pool reconnects: the server ended them ('lost':"
    " a crash, a shutdown, a switchover), answered as a read-only standby ('standby'), or"
    " left the client's protocol state unusable ('broken').",
    ["database", "reason"],
    registry=REGISTRY,
)
BYTES_IN_FLIGHT = Gauge(
    "encimap_bytes_in_flight",
    "Client data (IMAP literals, SMTP/LMTP DATA) held by the commands being received or run, "
    "per service; bounded by its max_*_bytes_in_flight.",
    ["service"],
    registry=REGISTRY,
)
DB_POOL_CONNECTIONS = Gauge(
    "encimap_db_pool_connections",
    "Connections of the service pools, per database, role and state (open, idle).",
    ["database", "role", "state"],
    registry=REGISTRY,
)
