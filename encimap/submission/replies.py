"""The replies the submission service gives itself (upstream replies are passed through).

Enhanced status codes per RFC 3463; AUTH codes per RFC 4954; 538 per RFC 4954 section 6.
"""

from __future__ import annotations

import datetime

from encimap import smtpdata

AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure, try again later"
AUTH_BAD_BASE64 = "501 5.5.2 Cannot decode base64"
AUTH_BAD_PLAIN = "501 5.5.2 Cannot split PLAIN response"
AUTH_CANCELLED = "501 5.7.0 Authentication aborted"
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication exchange line is too long"
STARTTLS_SYNTAX = "501 5.5.4 Syntax: STARTTLS"
TLS_NOT_AVAILABLE = "454 4.7.0 TLS not available"  # the implicit-TLS listener
TLS_READY = "220 2.0.0 Ready to start TLS"
TLS_ALREADY_ACTIVE = "554 5.5.1 Error: TLS already active"  # RFC 3207 4.2
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
AUTH_FIRST = "530 5.7.0 Authentication required"
NULL_SENDER = "553 5.7.1 Null sender not allowed for authenticated submission"
SENDER_NOT_OWNED = "553 5.7.1 Sender address not owned by the authenticated user"
FROM_NOT_OWNED = "553 5.7.1 From: header address missing or not owned by the authenticated user"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
UPSTREAM_UNAVAILABLE = "451 4.4.1 Upstream mail server unavailable, try again later"
DATABASE_UNAVAILABLE = "451 4.3.0 Temporary failure, try again later"
OK = "250 2.0.0 OK"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors, closing connection"
TIMEOUT = "421 4.4.2 Timeout, closing connection"
LOGIN_TIMEOUT = "421 4.7.0 Login time limit exceeded, closing connection"

# Replies that do not count towards `max_errors`: the server's own unavailability (a client
# retrying through a database failover must not be cut off for it, nor one whose DATA did not
# fit in the process's budget) and recipients over the per-message limit (answered without
# the database).
NOT_CLIENT_ERRORS = tuple(
    reply.encode()
    for reply in (
        TOO_MANY_RECIPIENTS,
        AUTH_UNAVAILABLE,
        UPSTREAM_UNAVAILABLE,
        DATABASE_UNAVAILABLE,
        smtpdata.INSUFFICIENT_STORAGE,
    )
)


def malformed_header(reason: object) -> str:
    """A header block that readers could take two ways (see submission.headers.scan)."""
    return f"554 5.6.0 Malformed message header: {reason}"


def rate_limited(limit: int, resets_at: datetime.datetime) -> str:
    when = resets_at.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"451 4.7.0 Hourly sending limit of {limit} recipients reached, try again after {when}"


def passthrough(code: int, message: str) -> str:
    """An upstream reply as lines for the client (multi-line replies keep their shape)."""
    lines = message.splitlines() or [""]
    return "\r\n".join(
        f"{code}{' ' if i == len(lines) - 1 else '-'}{line}" for i, line in enumerate(lines)
    )
