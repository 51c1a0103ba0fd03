"""Delivered messages: storing an encrypted message in a vaultbox's INBOX, quota usage.

`deliver` runs inside the caller's transaction, so a caller that stores one message to several
vaultboxes (SMTP mode) commits all of them or none. It serialises deliveries per vaultbox by
locking the vaultbox's INBOX row first: the duplicate check then sees every message committed
before it, and UIDs become visible in increasing order (an IMAP client never sees a lower UID
appear after a higher one).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from encimap.store.errors import NotFound
from encimap.store.types import Executor

INBOX = "INBOX"
# LISTEN on this channel to learn about new messages; payload "<vaultbox>:<mailbox>:<uid>".
NOTIFY_CHANNEL = "encimap_mailbox"


@dataclass(frozen=True)
class NewMessage:
    """One recipient's copy of a message, ready to store (never logged: `body` is content)."""

    vaultbox_id: uuid.UUID
    recipient: str
    sender: str
    message_id: str
    body: bytes = field(repr=False)
    body_sha256: str
    size_original: int
    encryption_method: str
    certificate_fingerprints: list[str]
    subject_encrypted: str | None
    internal_date: datetime
    outcome: str = "stored"  # "stored" (encrypted here) or "passthrough" (arrived encrypted)
    envelope: str | None = None
    bodystructure: str | None = None


@dataclass(frozen=True)
class Delivered:
    email_id: uuid.UUID
    mailbox_id: int
    uid: int
    duplicate: bool


@dataclass(frozen=True)
class Usage:
    messages: int
    bytes: int


async def usage(db: Executor, vaultbox_id: uuid.UUID) -> Usage:
    """How many messages and bytes a vaultbox holds (all mailboxes), for its quota."""
    row = await db.fetchrow(
        """SELECT count(*) AS messages, coalesce(sum(size_bytes), 0) AS bytes
             FROM encrypted_emails WHERE vaultbox_id = $1""",
        vaultbox_id,
    )
    return Usage(row["messages"], row["bytes"])


async def deliver(
    conn: Executor,
    message: NewMessage,
    *,
    queue_id: str,
    duplicate_window_seconds: float,
    duration_ms: int,
) -> Delivered:
    """Store `message` in the INBOX (in the caller's transaction) unless it is a duplicate.

    A duplicate is the same Message-ID and body hash delivered to the same vaultbox within the
    window: an MTA retrying after a lost reply. It is answered as delivered and stored once.
    """
    mailbox_id = await conn.fetchval(
        "SELECT id FROM mailboxes WHERE vaultbox_id = $1 AND name = $2 FOR UPDATE",
        message.vaultbox_id,
        INBOX,
    )
    if mailbox_id is None:
        raise NotFound(f"vaultbox {message.vaultbox_id} has no {INBOX}")
    earlier = await conn.fetchrow(
        """SELECT id, mailbox_id, uid FROM encrypted_emails
            WHERE vaultbox_id = $1 AND message_id = $2 AND body_sha256 = $3
              AND received_at > now() - make_interval(secs => $4)
            LIMIT 1""",
        message.vaultbox_id,
        message.message_id,
        message.body_sha256,
        float(duplicate_window_seconds),
    )
    if earlier is not None:
        delivered = Delivered(earlier["id"], earlier["mailbox_id"], earlier["uid"], True)
        await _log(conn, message, delivered, "duplicate", queue_id, duration_ms)
        return delivered
    uid = await conn.fetchval(
        "UPDATE mailboxes SET uid_next = uid_next + 1 WHERE id = $1 RETURNING uid_next - 1",
        mailbox_id,
    )
    email_id = await conn.fetchval(
        """INSERT INTO encrypted_emails
               (vaultbox_id, mailbox_id, uid, message_id, sender, recipient, subject_encrypted,
                body_encrypted, body_sha256, encryption_method, certificate_fingerprints,
                size_bytes, internal_date, envelope, bodystructure)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
           RETURNING id""",
        message.vaultbox_id,
        mailbox_id,
        uid,
        message.message_id,
        message.sender,
        message.recipient,
        message.subject_encrypted,
        message.body,
        message.body_sha256,
        message.encryption_method,
        message.certificate_fingerprints,
        len(message.body),
        message.internal_date,
        message.envelope,
        message.bodystructure,
    )
    delivered = Delivered(email_id, mailbox_id, uid, False)
    await _log(conn, message, delivered, message.outcome, queue_id, duration_ms)
    # Delivered to listeners at COMMIT, and only if the transaction commits.
    await conn.execute(
        "SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{message.vaultbox_id}:{mailbox_id}:{uid}"
    )
    return delivered


async def _log(
    conn: Executor,
    message: NewMessage,
    delivered: Delivered,
    outcome: str,
    queue_id: str,
    duration_ms: int,
) -> None:
    await conn.execute(
        """INSERT INTO email_processing_logs
               (vaultbox_id, email_id, queue_id, recipient, outcome, reply_code, algorithm,
                certificate_fingerprints, size_original, size_stored, duration_ms)
           VALUES ($1, $2, $3, $4, $5, '250', $6, $7, $8, $9, $10)""",
        message.vaultbox_id,
        delivered.email_id,
        queue_id,
        message.recipient,
        outcome,
        message.encryption_method,
        message.certificate_fingerprints,
        message.size_original,
        len(message.body),
        duration_ms,
    )


async def log_failure(
    db: Executor,
    *,
    vaultbox_id: uuid.UUID,
    queue_id: str,
    recipient: str,
    reply_code: str,
    size_original: int,
    duration_ms: int,
    error: str,
) -> None:
    """Record a delivery that was refused or failed (never with content)."""
    await db.execute(
        """INSERT INTO email_processing_logs
               (vaultbox_id, queue_id, recipient, outcome, reply_code, size_original,
                duration_ms, error)
           VALUES ($1, $2, $3, CASE WHEN $4 LIKE '4%' THEN 'tempfail' ELSE 'rejected' END,
                   $4, $5, $6, $7)""",
        vaultbox_id,
        queue_id,
        recipient,
        reply_code,
        size_original,
        duration_ms,
        error,
    )
